package remote

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/remote/internal/faultproxy"
)

// blobFixture is a blob in a registry, reached through a fault proxy.
type blobFixture struct {
	reg   *Registry
	proxy *faultproxy.Proxy
	ref   string
	desc  ocispec.Descriptor
	data  []byte
}

const blobSize = 1 << 20

func newBlobFixture(t *testing.T, backend string, opts ...Option) *blobFixture {
	t.Helper()
	data := randomBytes(blobSize, 42)
	desc := pushBlob(t, testRegistry(t), backend+"/test/blob", data)
	p := faultproxy.New(t, backend)
	return &blobFixture{reg: testRegistry(t, opts...), proxy: p, ref: p.Host + "/test/blob", desc: desc, data: data}
}

func (f *blobFixture) reader(t testing.TB) *BlobReader {
	t.Helper()
	br, err := f.reg.BlobReader(testCtx(t), f.ref, f.desc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	return br
}

// check reads ranges and compares them with the blob.
func (f *blobFixture) check(t *testing.T, br *BlobReader, ranges ...Range) error {
	t.Helper()
	got, err := br.ReadRanges(testCtx(t), ranges)
	if err != nil {
		return err
	}
	for i, rg := range ranges {
		if !bytes.Equal(got[i], f.data[rg.Offset:rg.end()]) {
			t.Fatalf("range %v: wrong bytes", rg)
		}
	}
	return nil
}

var scattered = []Range{{0, 4096}, {200 << 10, 4096}, {500 << 10, 100}, {blobSize - 10, 10}}

func TestBlobReadAt(t *testing.T) {
	for name, backend := range map[string]func(testing.TB) string{
		"ggcr":         func(t testing.TB) string { return regtest.InProcess(t, true) },
		"distribution": func(t testing.TB) string { return regtest.Distribution(t, "") },
	} {
		t.Run(name, func(t *testing.T) {
			f := newBlobFixture(t, backend(t))
			br := f.reader(t)
			for _, tc := range []struct {
				off  int64
				n    int
				want int
				err  error
			}{
				{0, 4096, 4096, nil},
				{12345, 1 << 20 / 2, 1 << 20 / 2, nil},
				{blobSize - 100, 4096, 100, io.EOF},
				{blobSize, 10, 0, io.EOF},
			} {
				p := make([]byte, tc.n)
				n, err := br.ReadAt(p, tc.off)
				if n != tc.want || !errors.Is(err, tc.err) && err != tc.err {
					t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d, %v", tc.n, tc.off, n, err, tc.want, tc.err)
				}
				if !bytes.Equal(p[:n], f.data[tc.off:tc.off+int64(n)]) {
					t.Fatalf("ReadAt(%d bytes at %d): wrong bytes", tc.n, tc.off)
				}
			}
			if _, err := br.ReadRanges(testCtx(t), []Range{{blobSize - 1, 2}}); !errdefs.IsOutOfRange(err) {
				t.Fatalf("range past the end: %v, want OutOfRange", err)
			}
			if err := f.check(t, br, scattered...); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBlobMissingIsNotFound(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true))
	d := descOf("application/octet-stream", []byte("never pushed"))
	br, err := f.reg.BlobReader(testCtx(t), f.ref, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadAt(make([]byte, 4), 0); !errdefs.IsNotFound(err) {
		t.Fatalf("read of a missing blob: %v, want NotFound", err)
	}
}

func TestBlobCoalescing(t *testing.T) {
	f := newBlobFixture(t, regtest.Distribution(t, ""))
	br := f.reader(t)

	t.Run("neighbouring reads cost one request", func(t *testing.T) {
		f.proxy.Reset()
		var burst []Range
		for i := int64(0); i < 16; i++ {
			burst = append(burst, Range{300<<10 + i*4096, 4096})
		}
		if err := f.check(t, br, burst...); err != nil {
			t.Fatal(err)
		}
		if n := f.proxy.Count("GET", "/blobs/"); n != 1 {
			t.Fatalf("%d requests for 16 neighbouring reads, want 1", n)
		}
	})
	t.Run("scattered reads go out as one multi-range request", func(t *testing.T) {
		f.proxy.Reset()
		if err := f.check(t, br, scattered...); err != nil {
			t.Fatal(err)
		}
		recs := f.proxy.Records()
		if len(recs) != 1 || strings.Count(recs[0].Range, ",") != len(scattered)-1 {
			t.Fatalf("requests %+v, want one with %d ranges", recs, len(scattered))
		}
	})
}

// go-containerregistry's registry answers a multi-range request with the first range only:
// the rest must be fetched singly, and the host remembered as single-range.
func TestBlobMultiRangeAnsweredPartially(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true))
	br := f.reader(t)
	if err := f.check(t, br, scattered...); err != nil {
		t.Fatal(err)
	}
	f.proxy.Reset()
	if err := f.check(t, br, scattered...); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.proxy.Records() {
		if strings.Contains(r.Range, ",") {
			t.Fatalf("multi-range request %q sent after the host was found not to serve them", r.Range)
		}
	}
	if n := f.proxy.Count("GET", "/blobs/"); n != len(scattered) {
		t.Fatalf("%d requests, want %d single-range ones", n, len(scattered))
	}
}

func TestBlobFaults(t *testing.T) {
	backend := regtest.Distribution(t, "")
	for _, tc := range []struct {
		name    string
		faults  []faultproxy.Fault
		ranges  []Range
		wantErr string        // empty: the bytes must be right
		min     time.Duration // the read must take at least this (Retry-After honoured)
		max     time.Duration
	}{
		{name: "dropped connections", faults: []faultproxy.Fault{{Kind: faultproxy.Drop, Times: 2}}, ranges: scattered, max: 3 * time.Second},
		{name: "delay", faults: []faultproxy.Fault{{Kind: faultproxy.Delay, Delay: 300 * time.Millisecond, Times: 1}}, ranges: scattered[:1], min: 300 * time.Millisecond, max: 3 * time.Second},
		{name: "503 burst with Retry-After", faults: []faultproxy.Fault{{Kind: faultproxy.Status, Code: 503, RetryAfter: "1", Times: 1}, {Kind: faultproxy.Status, Code: 503, Times: 2}}, ranges: scattered, min: time.Second, max: 5 * time.Second},
		{name: "503 burst, each with Retry-After", faults: []faultproxy.Fault{{Kind: faultproxy.Status, Code: 503, RetryAfter: "1", Times: 2}}, ranges: scattered, min: 2 * time.Second, max: 6 * time.Second},
		{name: "429 with Retry-After", faults: []faultproxy.Fault{{Kind: faultproxy.Status, Code: 429, RetryAfter: "1", Times: 1}}, ranges: scattered[1:2], min: time.Second, max: 5 * time.Second},
		{name: "429 burst", faults: []faultproxy.Fault{{Kind: faultproxy.Status, Code: 429, RetryAfter: "0", Times: 3}}, ranges: scattered[:2], max: 3 * time.Second},
		{name: "429 asking for an hour", faults: []faultproxy.Fault{{Kind: faultproxy.Status, Code: 429, RetryAfter: "3600", Times: 1}}, ranges: scattered[:1], wantErr: "retry after 1h0m0s", max: time.Second},
		{name: "503 for good", faults: []faultproxy.Fault{{Kind: faultproxy.Status, Code: 503, Times: -1}}, ranges: scattered[:1], wantErr: "503 Service Unavailable", max: 3 * time.Second},
		{name: "wrong Content-Range once", faults: []faultproxy.Fault{{Kind: faultproxy.ShiftRange, Times: 1}}, ranges: scattered[1:2], max: 3 * time.Second},
		{name: "wrong Content-Range for good", faults: []faultproxy.Fault{{Kind: faultproxy.ShiftRange, Times: -1}}, ranges: scattered[1:2], wantErr: "got Content-Range", max: 3 * time.Second},
		{name: "wrong Content-Range in multi-range", faults: []faultproxy.Fault{{Kind: faultproxy.ShiftRange, Times: -1}}, ranges: scattered, wantErr: "bytes", max: 3 * time.Second},
		{name: "truncated body once", faults: []faultproxy.Fault{{Kind: faultproxy.Truncate, Times: 1}}, ranges: []Range{{0, 256 << 10}}, max: 3 * time.Second},
		{name: "truncated multipart once", faults: []faultproxy.Fault{{Kind: faultproxy.Truncate, Times: 1}}, ranges: scattered, max: 3 * time.Second},
		{name: "truncated body for good", faults: []faultproxy.Fault{{Kind: faultproxy.Truncate, Times: -1}}, ranges: []Range{{0, 256 << 10}}, wantErr: "truncated", max: 3 * time.Second},
		{name: "multi-range refused with 200", faults: []faultproxy.Fault{{Kind: faultproxy.MultiAs200, Times: -1}}, ranges: scattered, max: 3 * time.Second},
		{name: "multi-range refused with 400", faults: []faultproxy.Fault{{Kind: faultproxy.MultiAs400, Times: -1}}, ranges: scattered, max: 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newBlobFixture(t, backend)
			f.proxy.Add(tc.faults...)
			br := f.reader(t)
			var err error
			d := timed(t, tc.max, func() { err = f.check(t, br, tc.ranges...) })
			if d < tc.min {
				t.Fatalf("took %s, less than %s: Retry-After or the delay was not honoured", d, tc.min)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("read failed: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}

// After a host refused a multi-range request, later reads use single ranges at once.
func TestBlobMultiRangeRefusalRemembered(t *testing.T) {
	for _, kind := range []faultproxy.Kind{faultproxy.MultiAs200, faultproxy.MultiAs400} {
		f := newBlobFixture(t, regtest.Distribution(t, ""))
		f.proxy.Add(faultproxy.Fault{Kind: kind, Times: -1})
		br := f.reader(t)
		if err := f.check(t, br, scattered...); err != nil {
			t.Fatal(err)
		}
		f.proxy.Reset()
		if err := f.check(t, br, scattered...); err != nil {
			t.Fatal(err)
		}
		if n := f.proxy.Count("GET", "/blobs/"); n != len(scattered) {
			t.Fatalf("kind %d: %d requests on the second read, want %d single-range ones", kind, n, len(scattered))
		}
		for _, r := range f.proxy.Records() {
			if strings.Contains(r.Range, ",") {
				t.Fatalf("kind %d: multi-range request sent again", kind)
			}
		}
	}
}

func TestBlobRedirectExpires(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true))
	f.proxy.RedirectBlobs()
	br := f.reader(t)
	registryGets := func() int { return f.proxy.Count("GET", "/v2/test/blob/blobs/") }
	storageGets := func() int { return f.proxy.Count("GET", "/storage/") }

	if err := f.check(t, br, Range{0, 4096}); err != nil {
		t.Fatal(err)
	}
	if registryGets() != 1 || storageGets() != 1 {
		t.Fatalf("first read: %d registry and %d storage requests, want 1 and 1", registryGets(), storageGets())
	}
	if err := f.check(t, br, Range{8192, 4096}); err != nil {
		t.Fatal(err)
	}
	if registryGets() != 1 || storageGets() != 2 {
		t.Fatalf("second read: %d registry and %d storage requests, want the discovered URL used directly", registryGets(), storageGets())
	}
	f.proxy.ExpireRedirects()
	timed(t, 3*time.Second, func() {
		if err := f.check(t, br, Range{16384, 4096}); err != nil {
			t.Fatal(err)
		}
	})
	if registryGets() != 2 {
		t.Fatalf("after expiry: %d registry requests, want the URL discovered again (2)", registryGets())
	}
	for _, r := range f.proxy.Records() {
		if strings.HasPrefix(r.Path, "/storage/") && r.Auth {
			t.Fatal("registry credentials sent to the storage URL")
		}
	}
}

func TestBlobSharedInFlight(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true))
	f.proxy.SetLatency(200 * time.Millisecond)
	br := f.reader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			if _, err := br.ReadAtContext(ctx, p, 4096); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(p, f.data[4096:8192]) {
				errs <- errors.New("wrong bytes")
			}
		}()
	}
	timed(t, 10*time.Second, wg.Wait)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := f.proxy.Count("GET", "/blobs/"); n != 1 {
		t.Fatalf("%d requests for 8 identical concurrent reads, want 1", n)
	}
}

func TestBlobConcurrencyLimit(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true), WithMaxConcurrency(2))
	f.proxy.SetLatency(50 * time.Millisecond)
	br := f.reader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := int64(0); i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 100)
			if _, err := br.ReadAtContext(ctx, p, i*100<<10); err != nil {
				t.Error(err)
			} else if !bytes.Equal(p, f.data[i*100<<10:i*100<<10+100]) {
				t.Errorf("read at %d: wrong bytes", i*100<<10)
			}
		}()
	}
	timed(t, 10*time.Second, wg.Wait)
	if n := f.proxy.MaxInFlight(); n > 2 || n < 1 {
		t.Fatalf("%d requests in flight at once, want at most 2", n)
	}
}

func TestBlobReadEndsWithContext(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true))
	f.proxy.Add(faultproxy.Fault{Kind: faultproxy.Delay, Delay: 10 * time.Second, Times: -1})
	br := f.reader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	timed(t, 2*time.Second, func() {
		if _, err := br.ReadAtContext(ctx, make([]byte, 10), 0); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("read past its context: %v, want DeadlineExceeded", err)
		}
	})
	br.Close()
	timed(t, 2*time.Second, func() {
		if _, err := br.ReadAt(make([]byte, 10), 0); !errors.Is(err, context.Canceled) {
			t.Fatalf("read after Close: %v, want Canceled", err)
		}
	})
}

func TestBlobRequestTimeout(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true), WithRequestTimeout(500*time.Millisecond))
	f.proxy.Add(faultproxy.Fault{Kind: faultproxy.Delay, Delay: 10 * time.Second, Times: -1})
	br := f.reader(t)
	timed(t, 2*time.Second, func() {
		if _, err := br.ReadAt(make([]byte, 10), 0); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("read beyond the request timeout: %v, want DeadlineExceeded", err)
		}
	})
}
