// Package cache is rill's on-disk cache of layer file contents: the bytes of the regular files
// of streamed layers, fetched on demand and verified by the caller, kept across restarts of
// the daemon and within a size budget.
//
// # Layout
//
// Content is stored per regular file, not per chunk, so that a file complete in the cache can
// be handed to the kernel as it is (FUSE passthrough):
//
//	<dir>/lock                               flock'ed by the process using the cache
//	<dir>/layers/<algo>/<hex>/journal        the layer's journal (see below)
//	<dir>/layers/<algo>/<hex>/files/<key>    one sparse data file per cached file, of its full size
//	<dir>/trash/                             layers being deleted (emptied at Open)
//
// A file's key is the caller's stable name for it within its layer (the FUSE layer uses the
// blob offset of the file's first chunk, which hardlinks share); keys are 1 to 128 bytes of
// [A-Za-z0-9._-] not starting with a dot, and anything else is refused. Chunks are written at
// their offsets in the data file; the file's presence map says which byte ranges hold data.
//
// # Journal and crash consistency
//
// Presence maps persist in one append-only journal per layer (one descriptor per layer however
// many files it has, one write per chunk, one file to read per layer at start). Each data
// record names a file key, the file's size, a byte range and the xxhash64 of the range's
// bytes, and is framed by its length and a crc32c; a drop record forgets a key (eviction), a
// drop range record the records a failed check found wrong (journal.go has the exact format).
// The record of a write is appended only after its data is written, and nothing is fsync'ed:
//
//   - the data of a write the journal does not record is never read (it is not present);
//   - a journal torn by a crash ends at its last record that parses and passes its crc32c;
//     the rest is cut off at Open, and later appends go exactly at the end of the last good
//     record, so a failed append never hides the ones after it;
//   - records read at Open describe ranges that are present but unchecked: the first read
//     (or OpenComplete) of such a range reads the whole recorded range and compares its hash,
//     and on a mismatch the range is dropped (treated as not cached, its blocks punched out,
//     counted in rill_cache_check_failures_total) so the caller fetches it again;
//   - bytes written or checked in this run are served without further checks: they are
//     never rewritten (WriteAt skips checked bytes), so they cannot change under a reader or a
//     passthrough descriptor.
//
// Hence a crash never leaves data that reads back wrong (short of an xxhash64 collision
// between the bytes meant and the bytes found, and the caller verifies chunk digests too).
// Deleting a layer renames its directory into the trash first, so a crash mid-delete leaves
// no half-deleted layer behind. A journal that has grown to four times its size after its
// last compaction (and to at least 64 KiB), or that is mostly forgotten records at Open, is
// compacted: the records a replay keeps are written to a new file, synced, and renamed over
// the old one, so a crash leaves one journal or the other, both truthful.
//
// # Budget and eviction
//
// Usage is counted in 4 KiB blocks holding present bytes, per file, layer and store (what the
// data takes on disk; the journals, a few dozen bytes per chunk, are not counted). A write
// first reserves the blocks it will add. When that would take the store over its budget
// (WithBudget; 0 is unlimited), files are evicted, least recently read or written first
// (after a restart, by data file mtime), until usage is 1/64 of the budget below what the
// write needs; a file is evicted whole. Never evicted: files with an open File handle, and
// every file of a pinned layer (Layer.Pin: the FUSE layer pins a layer for as long as it is
// mounted, so the budget evicts only data that no mounted layer needs to be complete). If not
// enough can be evicted — the data of mounted layers holds the budget — the write fails
// wrapping ErrNoSpace (counted in rill_cache_write_errors_total{reason="budget"}, and a
// warning is logged at most once a minute). So does a write that meets a full disk (ENOSPC,
// EDQUOT), which leaves no record and punches out what it wrote. Either way the
// store stays usable and the caller serves the bytes from the network. Store.RemoveLayer
// frees a layer's space at once; Store.Retain removes every layer not kept.
package cache
