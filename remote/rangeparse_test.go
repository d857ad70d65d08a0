package remote

import (
	"bytes"
	"fmt"
	"math"
	"mime/multipart"
	"net/textproto"
	"reflect"
	"strings"
	"testing"
)

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want contentRange
		ok   bool
	}{
		{"bytes 0-9/100", contentRange{0, 9, 100}, true},
		{"bytes 99-99/100", contentRange{99, 99, 100}, true},
		{"bytes 5-9/*", contentRange{5, 9, -1}, true},
		{"bytes 0-100/100", contentRange{}, false}, // past the end
		{"bytes 9-5/100", contentRange{}, false},
		{"bytes */100", contentRange{}, false}, // unsatisfied range
		{"bytes -1-5/100", contentRange{}, false},
		{"bytes +1-5/100", contentRange{}, false},
		{"bytes 1 -5/100", contentRange{}, false},
		{"items 0-9/100", contentRange{}, false},
		{"bytes 0-9", contentRange{}, false},
		{"bytes 0-99999999999999999999/100", contentRange{}, false},
		{"", contentRange{}, false},
	} {
		got, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseContentRange(%q) = %+v, %v; want %+v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestCoalesce(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []Range
		gap  int64
		want []Range
	}{
		{"adjacent merge", []Range{{0, 10}, {10, 10}}, 0, []Range{{0, 20}}},
		{"unsorted and overlapping", []Range{{50, 10}, {0, 30}, {20, 5}}, 0, []Range{{0, 30}, {50, 10}}},
		{"gap within limit", []Range{{0, 10}, {15, 5}}, 5, []Range{{0, 20}}},
		{"gap beyond limit", []Range{{0, 10}, {16, 5}}, 5, []Range{{0, 10}, {16, 5}}},
		{"contained", []Range{{0, 100}, {10, 10}}, 0, []Range{{0, 100}}},
		{"empty dropped", []Range{{5, 0}, {0, 1}}, 0, []Range{{0, 1}}},
	} {
		if got := coalesce(tc.in, tc.gap); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: coalesce(%v) = %v, want %v", tc.name, tc.in, got, tc.want)
		}
	}
}

func multipartBody(t testing.TB, size int64, parts ...part) (string, []byte) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", p.offset, p.offset+int64(len(p.data))-1, size))
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p.data)
	}
	mw.Close()
	return "multipart/byteranges; boundary=" + mw.Boundary(), buf.Bytes()
}

func TestParseMultipart(t *testing.T) {
	ct, body := multipartBody(t, 100, part{0, []byte("hello")}, part{50, []byte("world!")})
	parts, err := parseMultipart(bytes.NewReader(body), ct, 100, 11)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 2 || string(parts[0].data) != "hello" || parts[1].offset != 50 || string(parts[1].data) != "world!" {
		t.Fatalf("parts = %+v", parts)
	}

	t.Run("truncated", func(t *testing.T) {
		if _, err := parseMultipart(bytes.NewReader(body[:len(body)-20]), ct, 100, 11); err == nil {
			t.Fatal("truncated body accepted")
		}
	})
	t.Run("more than asked", func(t *testing.T) {
		if _, err := parseMultipart(bytes.NewReader(body), ct, 100, 10); err == nil {
			t.Fatal("body larger than the limit accepted")
		}
	})
	t.Run("wrong blob size", func(t *testing.T) {
		if _, err := parseMultipart(bytes.NewReader(body), ct, 101, 11); err == nil {
			t.Fatal("part of another blob size accepted")
		}
	})
	t.Run("part shorter than its Content-Range", func(t *testing.T) {
		bad := strings.Replace(string(body), "world!", "world", 1)
		if _, err := parseMultipart(strings.NewReader(bad), ct, 100, 11); err == nil {
			t.Fatal("short part accepted")
		}
	})
	t.Run("part claiming more than its body, with a huge limit", func(t *testing.T) {
		const size = 999999999999999999
		lying := "--x\r\nContent-Range: bytes 0-999999999999999998/999999999999999999\r\n\r\na\r\n--x--\r\n"
		_, err := parseMultipart(strings.NewReader(lying), "multipart/byteranges; boundary=x", size, math.MaxInt64)
		if err == nil || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("part of %d bytes with a body of 1: %v, want a truncated-body error", int64(size), err)
		}
	})
	t.Run("not multipart", func(t *testing.T) {
		if _, err := parseMultipart(bytes.NewReader(body), "application/octet-stream", 100, 11); err == nil {
			t.Fatal("non-multipart content type accepted")
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-9/100", "bytes 5-9/*", "bytes 9-5/10", "bytes */10", "bytes 0-0/1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := parseContentRange(s)
		if err != nil {
			return
		}
		if cr.first < 0 || cr.last < cr.first || (cr.size >= 0 && cr.last >= cr.size) || cr.size < -1 {
			t.Fatalf("parseContentRange(%q) = %+v: invariant broken", s, cr)
		}
		if again, err := parseContentRange(cr.String()); err != nil || again != cr {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}

func FuzzParseMultipart(f *testing.F) {
	ct, body := multipartBody(f, 100, part{0, []byte("hello")}, part{50, []byte("world!")})
	_, boundary, _ := strings.Cut(ct, "boundary=")
	f.Add(boundary, body, int64(100), int64(11))
	f.Add("x", []byte("--x\r\nContent-Range: bytes 0-0/1\r\n\r\na\r\n--x--\r\n"), int64(1), int64(1))
	f.Fuzz(func(t *testing.T, boundary string, body []byte, size, limit int64) {
		parts, err := parseMultipart(bytes.NewReader(body), "multipart/byteranges; boundary="+boundary, size, limit)
		if err != nil {
			return
		}
		var total int64
		for _, p := range parts {
			if p.offset < 0 || p.offset+int64(len(p.data)) > size {
				t.Fatalf("part at %d+%d outside a blob of %d", p.offset, len(p.data), size)
			}
			total += int64(len(p.data))
		}
		if total > limit {
			t.Fatalf("%d bytes returned, limit %d", total, limit)
		}
	})
}
