package cache

import (
	"context"
	"strconv"
	"testing"
)

// BenchmarkWriteRead64K stores 64 KiB chunks, as a fetch does, and reads each back.
func BenchmarkWriteRead64K(b *testing.B) {
	const chunk = 64 << 10
	const perFile = 1024 // 64 MiB files
	const perLayer = 4 * perFile
	s := openStore(b, b.TempDir())
	p := content("bench", 0, chunk)
	q := make([]byte, chunk)
	d := layerDigest("bench")
	var l *Layer
	var f *File
	b.SetBytes(2 * chunk)
	for i := 0; b.Loop(); i++ {
		if i%perLayer == 0 { // keep the disk footprint bounded
			b.StopTimer()
			if l != nil {
				f.Close()
				l.Release()
				if err := s.RemoveLayer(context.Background(), d); err != nil {
					b.Fatal(err)
				}
			}
			var err error
			if l, err = s.Layer(context.Background(), d); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		if i%perFile == 0 {
			if f != nil {
				f.Close()
			}
			var err error
			if f, err = l.File(strconv.Itoa(i), perFile*chunk); err != nil {
				b.Fatal(err)
			}
		}
		off := int64(i%perFile) * chunk
		if err := f.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
		if _, err := f.ReadAt(q, off); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	l.Release()
}

// BenchmarkReadHit4K reads 4 KiB at scattered offsets of a cached 64 MiB file: the hit path of
// a FUSE read.
func BenchmarkReadHit4K(b *testing.B) {
	const size = 64 << 20
	s := openStore(b, b.TempDir())
	f := openFile(b, acquire(b, s, layerDigest("bench")), "1", size)
	for off := int64(0); off < size; off += 1 << 20 {
		if err := f.WriteAt(content("bench", off, 1<<20), off); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.SetBytes(4096)
		p := make([]byte, 4096)
		for i := 0; b.Loop(); i++ {
			off := int64(i*7919%(size/4096)) * 4096
			if _, err := f.ReadAt(p, off); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetBytes(4096)
		b.RunParallel(func(pb *testing.PB) {
			p := make([]byte, 4096)
			for i := 0; pb.Next(); i++ {
				off := int64(i*7919%(size/4096)) * 4096
				if _, err := f.ReadAt(p, off); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
