// Package fstree describes a directory tree path by path — type, mode with special bits, owner,
// size, mtime (to the nanosecond), content hash, link target, device number, xattrs, hardlink groups — so tests
// can compare a streamed layer with what containerd extracts, bit for bit.
package fstree
