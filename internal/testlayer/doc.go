// Package testlayer builds image layers for tests: tar streams from entry lists, with
// deterministic content, including every kind of entry real layers hold (whiteouts, opaque
// directories, xattrs, hardlinks, devices, files spanning many chunks, names longer than
// ustar allows, unicode names, and layers that omit parent directories).
package testlayer
