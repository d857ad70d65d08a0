// Package containerdconf reads containerd's config.toml and merges rill's entries into it.
//
// The merge works on the text: it edits the lines of the settings rill needs and appends the
// tables that are missing, so every other setting, comment, blank line and the order of the
// file stay as they were (a TOML library that decodes and encodes the file would drop the
// comments). The result is parsed again and checked before it is returned: an edit that does
// not give the wanted values, or a file the text scanner cannot follow (a setting held in an
// inline table, a multi-line value to change), is an error that says to edit the file by hand.
//
// It knows two formats: version = 2 (containerd 1.7, also read by 2.x) and version = 3 or 4
// (containerd 2.x).
package containerdconf
