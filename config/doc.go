// Package config reads rill's one TOML configuration file (/etc/rill/config.toml by default),
// fills in defaults and validates every value. Unknown keys and invalid values are rejected
// with an error that names the key, so a typo never silently turns into a default.
//
// The documented example of every key with its default lives in script/config.toml.
package config
