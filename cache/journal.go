package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// Journal format (little endian), one file per layer:
//
//	header:  "rillcj01"                                     8 bytes
//	record:  body length n                                  u32
//	         body                                           n bytes
//	         crc32c(body)                                   u32
//	body:    kind                                           u8   (1 data, 2 drop, 3 drop range)
//	         key length k                                   u8
//	         key                                            k bytes
//	  data, drop range:
//	         file size, offset, length, xxhash64 of bytes   4 × u64
//
// A data record says "bytes [offset, offset+length) of the file with this key, whose full size
// is file size, were written and hash to xxhash64". A drop record says "everything recorded
// before for this key is gone" (eviction); a drop range record, "the records before that
// overlap this range are wrong" (a failed check; its hash field is zero). Parsing stops at the
// first record that is short, fails its crc32c or does not make sense: that is the torn tail
// of a crash, and is cut off before the next append.
const (
	journalMagic  = "rillcj01"
	kindData      = 1
	kindDrop      = 2
	kindDropRange = 3
	// maxBody bounds a record's body: kind, key length, key, four u64.
	maxBody = 2 + maxKeyLen + 4*8
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// record is one journal entry.
type record struct {
	kind uint8
	key  string
	size int64  // full size of the file (data records)
	off  int64  // first byte of the range (data records)
	len  int64  // length of the range (data records)
	hash uint64 // xxhash64 of the range's bytes (data records)
}

func (r record) end() int64 { return r.off + r.len }

// appendRecord encodes r at the end of b.
func appendRecord(b []byte, r record) []byte {
	ranged := r.kind == kindData || r.kind == kindDropRange
	n := 2 + len(r.key)
	if ranged {
		n += 4 * 8
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	start := len(b)
	b = append(b, r.kind, byte(len(r.key)))
	b = append(b, r.key...)
	if ranged {
		b = binary.LittleEndian.AppendUint64(b, uint64(r.size))
		b = binary.LittleEndian.AppendUint64(b, uint64(r.off))
		b = binary.LittleEndian.AppendUint64(b, uint64(r.len))
		b = binary.LittleEndian.AppendUint64(b, r.hash)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], crc32c))
}

// parseJournal decodes a journal. It returns the records of the longest valid prefix and that
// prefix's length in bytes (0 when even the header is missing or wrong). It never fails: bytes
// it cannot make sense of end the journal.
func parseJournal(b []byte) ([]record, int) {
	if len(b) < len(journalMagic) || string(b[:len(journalMagic)]) != journalMagic {
		return nil, 0
	}
	var recs []record
	pos := len(journalMagic)
	for {
		r, n, ok := parseRecord(b[pos:])
		if !ok {
			return recs, pos
		}
		recs = append(recs, r)
		pos += n
	}
}

// parseRecord decodes the record at the start of b and returns it with its encoded length.
func parseRecord(b []byte) (record, int, bool) {
	if len(b) < 4 {
		return record{}, 0, false
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n < 2 || n > maxBody || len(b) < 4+n+4 {
		return record{}, 0, false
	}
	body := b[4 : 4+n]
	if crc32.Checksum(body, crc32c) != binary.LittleEndian.Uint32(b[4+n:]) {
		return record{}, 0, false
	}
	r := record{kind: body[0]}
	k := int(body[1])
	if 2+k > n {
		return record{}, 0, false
	}
	r.key = string(body[2 : 2+k])
	if validKey(r.key) != nil {
		return record{}, 0, false
	}
	rest := body[2+k:]
	switch r.kind {
	case kindDrop:
		if len(rest) != 0 {
			return record{}, 0, false
		}
	case kindData, kindDropRange:
		if len(rest) != 4*8 {
			return record{}, 0, false
		}
		size := binary.LittleEndian.Uint64(rest[0:])
		off := binary.LittleEndian.Uint64(rest[8:])
		length := binary.LittleEndian.Uint64(rest[16:])
		// Unsigned comparisons first, so nothing below can overflow.
		if size > maxFileSize || length == 0 || off >= size || length > size-off {
			return record{}, 0, false
		}
		r.size, r.off, r.len = int64(size), int64(off), int64(length)
		r.hash = binary.LittleEndian.Uint64(rest[24:])
	default:
		return record{}, 0, false
	}
	return r, 4 + n + 4, true
}

// replayed is what a journal says about one file.
type replayed struct {
	size int64
	recs []record // data records, sorted by offset
}

// replay folds records into the state of each file: a drop forgets a key, a drop range
// forgets the key's records that overlap it, and a data record whose file size differs from
// the key's earlier records replaces them (the key was reused).
func replay(recs []record) map[string]*replayed {
	files := make(map[string]*replayed)
	for _, r := range recs {
		switch r.kind {
		case kindDrop:
			delete(files, r.key)
		case kindDropRange:
			if f := files[r.key]; f != nil && f.size == r.size {
				kept := f.recs[:0]
				for _, x := range f.recs {
					if x.end() <= r.off || x.off >= r.end() {
						kept = append(kept, x)
					}
				}
				f.recs = kept
			}
		case kindData:
			f := files[r.key]
			if f == nil || f.size != r.size {
				f = &replayed{size: r.size}
				files[r.key] = f
			}
			f.recs = append(f.recs, r)
		}
	}
	for key, f := range files {
		if len(f.recs) == 0 {
			delete(files, key)
			continue
		}
		sort.SliceStable(f.recs, func(i, j int) bool { return f.recs[i].off < f.recs[j].off })
	}
	return files
}

// compacted returns the records that replay to the same state as files, in key order.
func compacted(files map[string]*replayed) []record {
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []record
	for _, k := range keys {
		out = append(out, files[k].recs...)
	}
	return out
}

// journal appends records to a layer's journal file. Appends go at the end of the last good
// record, never with O_APPEND, so that a failed append is overwritten by the next one instead
// of hiding it from the parser. When the journal has grown to four times its size after the
// last compaction, it is compacted: rewritten with only the records a replay keeps. Files are
// opened relative to the layer's directory, which may be moved to the trash meanwhile.
type journal struct {
	mu     sync.Mutex
	dir    *os.File // the layer's directory
	f      *os.File
	end    int64 // offset just past the last good record
	next   int64 // compact when end reaches this
	closed bool
	buf    []byte
}

var errJournalClosed = errors.New("cache: layer journal closed")

// openJournal opens (creating it if needed) the journal in the layer directory dir, whose
// first valid bytes end at valid as found by parseJournal, and cuts off whatever follows
// them. The journal owns dir from then on, even on error.
func openJournal(dir *os.File, valid int64) (*journal, error) {
	f, err := openAt(dir, "journal", unix.O_RDWR|unix.O_CREAT)
	if err == nil && valid < int64(len(journalMagic)) {
		_, err = f.WriteAt([]byte(journalMagic), 0)
		valid = int64(len(journalMagic))
	}
	if err == nil {
		err = f.Truncate(valid)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		dir.Close()
		return nil, err
	}
	return &journal{dir: dir, f: f, end: valid, next: nextCompaction(valid)}, nil
}

func nextCompaction(size int64) int64 { return max(compactMin, 4*size) }

// append writes records after the last good one. On failure nothing is recorded: the partial
// write is cut off (or, should that fail too, overwritten by the next append).
func (j *journal) append(recs ...record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return errJournalClosed
	}
	j.buf = j.buf[:0]
	for _, r := range recs {
		j.buf = appendRecord(j.buf, r)
	}
	if _, err := j.f.WriteAt(j.buf, j.end); err != nil {
		_ = j.f.Truncate(j.end)
		return err
	}
	j.end += int64(len(j.buf))
	if j.end >= j.next {
		if err := j.compactLocked(); err != nil {
			j.next = nextCompaction(j.end) // try again later; the journal is fine as it is
		}
	}
	return nil
}

// compactLocked rewrites the journal with the records a replay keeps. j.mu is held.
func (j *journal) compactLocked() error {
	b := make([]byte, j.end)
	if _, err := j.f.ReadAt(b, 0); err != nil {
		return err
	}
	recs, _ := parseJournal(b)
	f, n, err := writeJournal(j.dir, compacted(replay(recs)))
	if err != nil {
		return err
	}
	j.f.Close()
	j.f, j.end, j.next = f, n, nextCompaction(n)
	return nil
}

func (j *journal) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return
	}
	j.closed = true
	j.f.Close()
	j.dir.Close()
}

// writeJournal atomically replaces the journal in the layer directory dir with one holding
// recs, and returns it open with its size: it writes a temporary file, syncs it, renames it
// over the old one and syncs the directory, so a crash leaves either journal, each of which
// describes the data truthfully.
func writeJournal(dir *os.File, recs []record) (*os.File, int64, error) {
	b := []byte(journalMagic)
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	const tmp = "journal.tmp"
	f, err := openAt(dir, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC)
	if err != nil {
		return nil, 0, fmt.Errorf("compact journal: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = withFD(dir, func(fd int) error { return unix.Renameat(fd, tmp, fd, "journal") })
	}
	if err != nil {
		f.Close()
		_ = withFD(dir, func(fd int) error { return unix.Unlinkat(fd, tmp, 0) })
		return nil, 0, fmt.Errorf("compact journal: %w", err)
	}
	_ = dir.Sync()
	return f, int64(len(b)), nil
}

// openAt opens the file name in directory dir, never following a symlink.
func openAt(dir *os.File, name string, flags int) (*os.File, error) {
	var nfd int
	err := withFD(dir, func(dfd int) error {
		var err error
		nfd, err = unix.Openat(dfd, name, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
		return err
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(nfd), name), nil
}
