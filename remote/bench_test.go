package remote

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/remote/internal/faultproxy"
)

// BenchmarkReadAt measures read patterns over loopback through a proxy that delays every
// request by 20 ms (a round trip on a slow link), against the distribution registry. It
// reports the HTTP requests per operation and the time per read (a burst counts as one).
func BenchmarkReadAt(b *testing.B) {
	const size = 8 << 20
	backend := regtest.Distribution(b, "")
	data := randomBytes(size, 11)
	desc := pushBlob(b, testRegistry(b), backend+"/bench/blob", data)
	p := faultproxy.New(b, backend)
	p.SetLatency(20 * time.Millisecond)
	// The same link to a registry that refuses multi-range requests (answers 400).
	single := faultproxy.New(b, backend)
	single.SetLatency(20 * time.Millisecond)
	single.Add(faultproxy.Fault{Kind: faultproxy.MultiAs400, Times: -1})
	reg := testRegistry(b)

	burst := func(start int64, n int, stride int64) []Range {
		rs := make([]Range, n)
		for i := range rs {
			rs[i] = Range{Offset: start + int64(i)*stride, Length: 4096}
		}
		return rs
	}
	for _, bc := range []struct {
		name   string
		proxy  *faultproxy.Proxy
		ranges func(i int, rnd *rand.Rand) []Range
	}{
		{"sequential-4KiB", p, func(i int, _ *rand.Rand) []Range { return []Range{{int64(i) * 4096 % (size - 4096), 4096}} }},
		{"random-4KiB", p, func(_ int, rnd *rand.Rand) []Range { return []Range{{rnd.Int64N(size - 4096), 4096}} }},
		{"1MiB", p, func(i int, _ *rand.Rand) []Range { return []Range{{int64(i) << 20 % (size - 1<<20), 1 << 20}} }},
		{"burst-16-neighbouring-4KiB", p, func(i int, _ *rand.Rand) []Range { return burst(int64(i)*65536%(size-65536), 16, 4096) }},
		{"burst-16-scattered-4KiB", p, func(_ int, rnd *rand.Rand) []Range { return burst(rnd.Int64N(size/2), 16, 200<<10) }},
		{"burst-16-scattered-4KiB-single-range-host", single, func(_ int, rnd *rand.Rand) []Range { return burst(rnd.Int64N(size/2), 16, 200<<10) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := bc.proxy
			br, err := reg.BlobReader(testCtx(b), p.Host+"/bench/blob", desc)
			if err != nil {
				b.Fatal(err)
			}
			defer br.Close()
			rnd := rand.New(rand.NewPCG(1, 2))
			// Warm up: the connection and, for the burst, what the host serves.
			if _, err := br.ReadRanges(testCtx(b), bc.ranges(0, rnd)); err != nil {
				b.Fatal(err)
			}
			p.Reset()
			b.ResetTimer()
			var bytesRead int64
			for i := 0; i < b.N; i++ {
				rs := bc.ranges(i, rnd)
				got, err := br.ReadRanges(testCtx(b), rs)
				if err != nil {
					b.Fatal(err)
				}
				for j, r := range rs {
					if !bytes.Equal(got[j], data[r.Offset:r.end()]) {
						b.Fatalf("wrong bytes at %d", r.Offset)
					}
					bytesRead += r.Length
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(p.Count("GET", ""))/float64(b.N), "requests/op")
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/read")
			b.SetBytes(bytesRead / int64(b.N))
		})
	}
}
