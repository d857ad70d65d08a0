package artifact

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/rillstream/rill/internal/testlayer"
)

// tocJSONOf is the TOC JSON rill's converter would write for entries' headers (chunk entries
// for files larger than one MiB), with every field estargz and rill's extension write.
func tocJSONOf(t testing.TB, entries []testlayer.Entry) []byte {
	t.Helper()
	var headers []*tar.Header
	toc := &estargz.JTOC{Version: 1}
	offset := int64(100)
	for _, e := range entries {
		h := e.Header
		headers = append(headers, &h)
		typ := map[byte]string{tar.TypeReg: "reg", tar.TypeDir: "dir", tar.TypeSymlink: "symlink", tar.TypeLink: "hardlink", tar.TypeChar: "char", tar.TypeBlock: "block", tar.TypeFifo: "fifo"}[h.Typeflag]
		x := &estargz.TOCEntry{Name: h.Name, Type: typ, Mode: h.Mode, UID: h.Uid, GID: h.Gid, Uname: "user", Gname: "group",
			LinkName: h.Linkname, DevMajor: int(h.Devmajor), DevMinor: int(h.Devminor), ModTime3339: h.ModTime.UTC().Format("2006-01-02T15:04:05Z07:00")}
		for k, v := range h.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if x.Xattrs == nil {
					x.Xattrs = map[string][]byte{}
				}
				x.Xattrs[name] = []byte(v)
			}
		}
		toc.Entries = append(toc.Entries, x)
		if typ != "reg" || h.Size == 0 {
			continue
		}
		x.Size, x.Offset, x.ChunkDigest, x.Digest = h.Size, offset, placeholderDigest, placeholderDigest
		offset += 100
		for off := int64(1 << 20); off < h.Size; off += 1 << 20 {
			x.ChunkSize = 1 << 20
			toc.Entries = append(toc.Entries, &estargz.TOCEntry{Name: h.Name, Type: "chunk", Offset: offset, ChunkOffset: off, ChunkSize: min(1<<20, h.Size-off), ChunkDigest: placeholderDigest})
			offset += 100
		}
	}
	ext, err := Extend(toc, headers)
	if err != nil {
		t.Fatal(err)
	}
	tocJSON, err := WriteTOCAndFooter(&bytes.Buffer{}, offset, ext, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tocJSON
}

// The fast decoder takes the TOCs writers produce, and decodes them as encoding/json does.
func TestDecodeTOCFastTakesWhatWritersWrite(t *testing.T) {
	for name, entries := range map[string][]testlayer.Entry{
		"every kind": testlayer.EveryKind(),
		"quirks":     testlayer.RootfsQuirks(), // names that are not UTF-8, nanosecond times
		"runtime":    testlayer.Runtime(3, 2000, 2),
	} {
		t.Run(name, func(t *testing.T) {
			tocJSON := tocJSONOf(t, entries)
			fast, ok := decodeTOCFast(tocJSON)
			if !ok {
				t.Fatal("the fast decoder left a writer's TOC to encoding/json")
			}
			var std JTOC
			if err := json.Unmarshal(tocJSON, &std); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(fast, &std) {
				t.Fatal("the fast decoder's TOC differs from encoding/json's")
			}
		})
	}
}

// Whatever the input, a TOC the fast decoder accepts is the one encoding/json decodes, and
// DecodeTOC answers as encoding/json does.
func FuzzDecodeTOC(f *testing.F) {
	f.Add(tocJSONOf(f, testlayer.EveryKind()))
	f.Add(tocJSONOf(f, testlayer.RootfsQuirks()))
	for _, s := range []string{
		`{"version":1,"entries":[]}`,
		`{"version":1,"entries":null}`,
		`null`,
		`{"version":1,"entries":[null,{"name":"a","type":"reg","size":null,"xattrs":{"k":null,"":"","a":"YQ==","a":"Yg=="}}]}`,
		`{"version":1,"entries":[{"name":"a","NAME":"b"}]}`,
		`{"version":1,"entries":[{"name":"a","name":"b","size":1}]}`,
		`{"entries":[{"name":"a","size":1}],"entries":[{"name":"b"}]}`,
		`{"version":1,"entries":[{"name":"\u00e9\ud800x\"\\\/\b\f\n\r\t","linkName":"caf` + "\xe9" + `"}]}`,
		`{"version":1,"entries":[{"name":"a","mode":-0,"uid":9223372036854775807,"gid":-9223372036854775808}]}`,
		`{"version":1,"entries":[{"name":"a","mode":1e3}]}`,
		`{"version":1,"entries":[{"name":"a","size":01}]}`,
		`{"version":1,"entries":[{"name":"a","size":18446744073709551616}]}`,
		`{"version":1,"entries":[{"name":"a","rillName":"/w==","rillLinkName":"","rillFuture":{"x":[1,-2.5e+3,true,false,null,"\u0041"]}}]}`,
		`{"version":1,"entries":[{"name":"a","rillName":"/w=\n="}]}`,
		`{"version":1,"entries":[{"name":"a","rillName":[1,2]}]}`,
		`{"version":1,"entries":[{"ſize":1,"linKName":"x","linkName":"y"}]}`,
		`{"version":1,"entries":[{"name":"a"}]} x`,
		"\t{ \"version\" : 1 ,\n\"entries\" : [ { \"name\" : \"a\" } ] }\r\n",
		`{"version":true}`,
		`{"version":1,"entries":[{"name":"a","xattrs":{"\u0041":"YQ=="}}]}`,
		`{"version":1,"entries":[{"name":"a","unknown":"` + "\x01" + `"}]}`,
		`{"version":1,"entries":[{"name":"a","unknown":[[[[[[[[[[[[]]]]]]]]]]]]}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var std JTOC
		stdErr := json.Unmarshal(data, &std)
		if fast, ok := decodeTOCFast(data); ok {
			if stdErr != nil {
				t.Fatalf("the fast decoder accepted what encoding/json refuses: %v", stdErr)
			}
			if !reflect.DeepEqual(fast, &std) {
				a, _ := json.Marshal(fast)
				b, _ := json.Marshal(&std)
				t.Fatalf("the fast decoder's TOC differs from encoding/json's:\n%s\n%s", a, b)
			}
		}
		got, err := DecodeTOC(data)
		if (err == nil) != (stdErr == nil) || err == nil && !reflect.DeepEqual(got, &std) {
			t.Fatalf("DecodeTOC answers %v, encoding/json %v", err, stdErr)
		}
	})
}
