package cache

import (
	"bytes"
	"reflect"
	"testing"
)

func sampleRecords() []record {
	return []record{
		{kind: kindData, key: "1", size: 100, off: 0, len: 50, hash: 1},
		{kind: kindData, key: "2", size: 1 << 40, off: 1 << 39, len: 1 << 20, hash: 2},
		{kind: kindData, key: "1", size: 100, off: 50, len: 50, hash: 3},
		{kind: kindDrop, key: "2"},
		{kind: kindData, key: "3", size: 10, off: 9, len: 1, hash: 4},
		{kind: kindData, key: "3", size: 20, off: 0, len: 5, hash: 5}, // size changed: replaces
		{kind: kindData, key: "4", size: 30, off: 0, len: 10, hash: 6},
		{kind: kindData, key: "4", size: 30, off: 10, len: 10, hash: 7},
		{kind: kindDropRange, key: "4", size: 30, off: 5, len: 2}, // a failed check
		{kind: kindData, key: "4", size: 30, off: 0, len: 10, hash: 8},
	}
}

func encode(recs []record) []byte {
	b := []byte(journalMagic)
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	return b
}

func TestJournalRoundTrip(t *testing.T) {
	recs := sampleRecords()
	b := encode(recs)
	got, n := parseJournal(b)
	if n != len(b) || !reflect.DeepEqual(got, recs) {
		t.Fatalf("parse(encode(recs)) = %v (%d of %d bytes)", got, n, len(b))
	}
	files := replay(got)
	want := map[string]*replayed{
		"1": {size: 100, recs: []record{recs[0], recs[2]}},
		"3": {size: 20, recs: []record{recs[5]}},
		"4": {size: 30, recs: []record{recs[9], recs[7]}},
	}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("replay: got %+v", files)
	}
	// Compaction keeps exactly what replay keeps.
	c := compacted(files)
	if again := replay(c); !reflect.DeepEqual(again, want) {
		t.Errorf("replay of the compacted journal: got %+v", again)
	}
	if len(c) != 5 {
		t.Errorf("compacted to %d records, want 5", len(c))
	}
}

// TestJournalRejects checks records that pass their checksum but make no sense.
func TestJournalRejects(t *testing.T) {
	for name, r := range map[string]record{
		"range past the end":     {kind: kindData, key: "1", size: 100, off: 90, len: 11},
		"empty range":            {kind: kindData, key: "1", size: 100, off: 10, len: 0},
		"offset past the end":    {kind: kindData, key: "1", size: 100, off: 100, len: 1},
		"negative offset":        {kind: kindData, key: "1", size: 100, off: -1, len: 2},
		"overflowing range":      {kind: kindData, key: "1", size: maxFileSize, off: 10, len: -1},
		"file too large":         {kind: kindData, key: "1", size: maxFileSize + 1, off: 0, len: 1},
		"key with a slash":       {kind: kindData, key: "a/b", size: 100, off: 0, len: 1},
		"dot-dot key":            {kind: kindDrop, key: ".."},
		"unknown kind":           {kind: 7, key: "1"},
		"drop of an empty key":   {kind: kindDrop, key: ""},
		"data with an empty key": {kind: kindData, key: "", size: 1, off: 0, len: 1},
	} {
		good := record{kind: kindData, key: "1", size: 100, off: 0, len: 1}
		b := appendRecord(encode([]record{good}), r)
		b = appendRecord(b, good)
		got, n := parseJournal(b)
		if len(got) != 1 || n != len(encode([]record{good})) {
			t.Errorf("%s: parsed %d records (%d bytes); want only the one before it", name, len(got), n)
		}
	}
}

// FuzzParseJournal feeds arbitrary bytes to the journal parser: it never panics, the valid
// prefix it reports re-encodes to exactly the same bytes, and no record (nor anything replay
// makes of them) claims a range outside its file.
func FuzzParseJournal(f *testing.F) {
	full := encode(sampleRecords())
	f.Add(full)
	f.Add(full[:len(full)-3])
	f.Add([]byte(journalMagic))
	f.Add([]byte{})
	f.Add(append(bytes.Clone(full), 0xff, 0xff, 0xff, 0xff))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, n := parseJournal(b)
		if n < 0 || n > len(b) {
			t.Fatalf("valid prefix %d of %d bytes", n, len(b))
		}
		if n == 0 {
			if len(recs) != 0 {
				t.Fatal("records without a header")
			}
			return
		}
		if re := encode(recs); !bytes.Equal(re, b[:n]) {
			t.Fatalf("valid prefix does not re-encode to itself")
		}
		for _, r := range recs {
			if validKey(r.key) != nil {
				t.Fatalf("record with invalid key %q", r.key)
			}
		}
		files := replay(recs)
		if again := replay(compacted(files)); !reflect.DeepEqual(again, files) {
			t.Fatalf("compaction changed what the journal says")
		}
		for key, f := range files {
			if f.size < 0 || f.size > maxFileSize {
				t.Fatalf("file %s of size %d", key, f.size)
			}
			for _, r := range f.recs {
				if r.kind != kindData || r.size != f.size || r.off < 0 || r.len <= 0 || r.off > f.size-r.len {
					t.Fatalf("file %s (size %d): record %+v outside it", key, f.size, r)
				}
			}
		}
	})
}
