package fs

import (
	"container/list"
	"sync"
)

// ChunkBuffer keeps, in memory and within a bound, verified chunks that the cache could not
// store (its disk full, its budget held by mounted layers), so that a file read twice while
// the cache is full is not fetched twice. Least recently used chunks go first. One buffer
// may serve every mounted layer (MountOptions.Buffer); a layer's chunks leave it at Unmount.
// It is safe for concurrent use.
type ChunkBuffer struct {
	max int64

	mu    sync.Mutex
	used  int64
	lru   *list.List // of *bufEntry, most recently used first
	items map[bufKey]*list.Element
}

type bufKey struct {
	owner *chunkReader // the layer
	off   int64        // the chunk's blob offset
}

type bufEntry struct {
	key  bufKey
	data []byte
}

// NewChunkBuffer returns a buffer of at most maxBytes of chunk data (≤ 0: it keeps nothing).
func NewChunkBuffer(maxBytes int64) *ChunkBuffer {
	return &ChunkBuffer{max: maxBytes, lru: list.New(), items: map[bufKey]*list.Element{}}
}

// put keeps data, the verified bytes of the chunk at blob offset off of owner's layer.
func (b *ChunkBuffer) put(owner *chunkReader, off int64, data []byte) {
	if b == nil || int64(len(data)) > b.max {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k := bufKey{owner, off}
	if e, ok := b.items[k]; ok {
		b.lru.MoveToFront(e)
		return
	}
	b.items[k] = b.lru.PushFront(&bufEntry{key: k, data: data})
	b.used += int64(len(data))
	for b.used > b.max {
		b.removeLocked(b.lru.Back())
	}
}

// get returns the chunk at blob offset off of owner's layer, if kept.
func (b *ChunkBuffer) get(owner *chunkReader, off int64) ([]byte, bool) {
	if b == nil {
		return nil, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.items[bufKey{owner, off}]
	if !ok {
		return nil, false
	}
	b.lru.MoveToFront(e)
	return e.Value.(*bufEntry).data, true
}

// drop forgets every chunk of owner's layer.
func (b *ChunkBuffer) drop(owner *chunkReader) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, e := range b.items {
		if k.owner == owner {
			b.removeLocked(e)
		}
	}
}

// Bytes returns how many bytes of chunks the buffer holds.
func (b *ChunkBuffer) Bytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

func (b *ChunkBuffer) removeLocked(e *list.Element) {
	be := b.lru.Remove(e).(*bufEntry)
	delete(b.items, be.key)
	b.used -= int64(len(be.data))
}
