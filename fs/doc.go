// Package fs serves a streamed layer: a go-fuse v2 filesystem over the TOC of an eStargz
// layer blob, whose file data is fetched on demand, verified against the chunk digests in the
// TOC and only then returned.
//
// A layer goes through three steps:
//
//   - LoadTOC reads the footer and the TOC from the blob (two range reads; one with
//     LoadTOCJSONAt when the layer's annotation says where the TOC starts), checks the TOC
//     against the digest recorded in the image (the TOC is the root of trust for every byte
//     served) and enforces size limits;
//   - NewIndex validates the TOC as hostile input — paths that escape or repeat, entries that
//     conflict, chunks that do not tile their file, point outside the blob or are larger than
//     the node should hold in memory (MaxChunkSize, MaxSegmentSize) — and turns it
//     into the tree overlayfs expects of a lower layer: directories the layer only implies
//     are created, whiteouts become 0/0 character devices and opaque markers the
//     trusted.overlay.opaque xattr, eStargz bookkeeping entries are hidden;
//   - Mount serves the index through FUSE. The layer is immutable, so the kernel may cache
//     entries, attributes, negative lookups and pages for as long as it is mounted. A layer
//     outlives the process serving it: Stop leaves it mounted, its /dev/fuse descriptor
//     (Device) kept elsewhere (fdstore), and Resume serves the same connection in the next
//     process — node IDs from the index (inode.go), file handles that are names (handle.go),
//     each inode's io mode in the state directory (iomode.go), INIT replayed (conn.go).
//
// Reads map to the file's chunks. A layer mounted with a cache (MountOptions.Cache, a
// cache.Layer the caller owns, which Mount pins for as long as the layer is served: the
// cache's budget never evicts what a mounted layer holds) serves a chunk from the file's
// cached content when it holds it; each open of a file holds its cache.File, keyed by the
// blob offset of the file's first chunk. A chunk not cached is read from the
// blob (one range: its gzip member), decompressed, checked against its digest, stored in the
// cache and returned. A miss brings along, in the same request, what is likely read next: a
// sequential reader's following chunks (read-ahead, in a window that grows), else the rest of
// a small file and the files that follow it in the blob (files used together sit together);
// a read at random inside a large file fetches its chunk alone. Each fetch claims every chunk
// it brings, so a read of one of them waits for it: no byte is fetched twice at once. A chunk
// that fails the check is fetched once more; if it fails again the read gets EIO. Unverified
// bytes are never returned, nor stored; a failure of the cache only costs a fetch.
//
// Reads come first. Their requests are on-demand for the registry's scheduler (remote's
// priorities), prefetch requests carry remote.PriorityPrefetch and the background fetch
// remote.PriorityBackground. Within a layer, prefetch and background work start no request
// while reads are fetching, and a read that starts fetching ends the background transfer in
// flight (it is asked for again afterwards), so that the read has the link to itself.
package fs
