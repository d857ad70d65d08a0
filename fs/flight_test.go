package fs

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rillstream/rill/internal/testlayer"
	"github.com/sirupsen/logrus"
)

// stallFirstBlob stalls its first read until released; later reads answer at once.
type stallFirstBlob struct {
	data    []byte
	reads   atomic.Int64
	started chan struct{} // closed when the first read has begun
	release chan struct{}
}

func (b *stallFirstBlob) ReadAt(p []byte, off int64) (int, error) {
	if b.reads.Add(1) == 1 {
		close(b.started)
		<-b.release
	}
	return copy(p, b.data[off:]), nil
}

// A read that gives up on a chunk (its timeout) does not take down the reads that were
// waiting for the same fetch: one of them fetches the chunk again.
func TestFetchOutlivesTheReadThatStartedIt(t *testing.T) {
	body := testlayer.RandomBytes(71, 64<<10)
	data, l := convertedBlob(t, []testlayer.Entry{testlayer.Reg("f", body, 0o644)})
	toc, err := LoadTOC(context.Background(), bytes.NewReader(data), int64(len(data)), l.TOCDigest, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	n := idx.Root.Child("f")
	blob := &stallFirstBlob{data: data, started: make(chan struct{}), release: make(chan struct{})}
	defer close(blob.release)
	r := &chunkReader{blob: blob, metrics: NewMetrics(), log: logrus.NewEntry(logrus.StandardLogger())}

	impatient := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := r.readFile(ctx, n, nil, make([]byte, len(body)), 0)
		impatient <- err
	}()
	<-blob.started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make([]byte, len(body))
	if _, err := r.readFile(ctx, n, nil, got, 0); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read that joined a fetch whose leader gave up: err %v, equal %v", err, bytes.Equal(got, body))
	}
	if err := <-impatient; err == nil {
		t.Errorf("the read that timed out succeeded")
	}
	if n := blob.reads.Load(); n != 2 {
		t.Errorf("blob reads: %d, want 2 (the stalled one and the new fetch)", n)
	}
}
