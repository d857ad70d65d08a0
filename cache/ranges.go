package cache

// Range is a byte range [Off, Off+Len) of a file.
type Range struct {
	Off int64
	Len int64
}

// End returns the offset just past the range.
func (r Range) End() int64 { return r.Off + r.Len }

// span is a half-open interval [start, end).
type span struct{ start, end int64 }

// spans is a sorted set of disjoint, non-adjacent intervals. The zero value is empty.
type spans []span

// covers reports whether every byte of [start, end) is in the set.
func (s spans) covers(start, end int64) bool {
	if start >= end {
		return true
	}
	i := s.search(start)
	return i < len(s) && s[i].start <= start && s[i].end >= end
}

// search returns the index of the first interval whose end is beyond off.
func (s spans) search(off int64) int {
	lo, hi := 0, len(s)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s[m].end <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// add inserts [start, end), merging with overlapping and adjacent intervals. Like append, it
// reuses s's array: keep only the result.
func (s spans) add(start, end int64) spans {
	if start >= end {
		return s
	}
	// i: the first interval that ends at or after start (adjacent ones merge).
	lo, hi := 0, len(s)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s[m].end < start {
			lo = m + 1
		} else {
			hi = m
		}
	}
	i, j := lo, lo
	for j < len(s) && s[j].start <= end {
		start = min(start, s[j].start)
		end = max(end, s[j].end)
		j++
	}
	if i == j {
		s = append(s, span{})
		copy(s[i+1:], s[i:])
		s[i] = span{start, end}
		return s
	}
	s[i] = span{start, end}
	return append(s[:i+1], s[j:]...)
}

// gaps returns the parts of [start, end) that are not in the set, in order.
func (s spans) gaps(start, end int64) []span {
	var out []span
	for i := s.search(start); i < len(s) && start < end; i++ {
		if s[i].start >= end {
			break
		}
		if s[i].start > start {
			out = append(out, span{start, s[i].start})
		}
		start = max(start, s[i].end)
	}
	if start < end {
		out = append(out, span{start, end})
	}
	return out
}

// bytes returns the number of bytes in the set.
func (s spans) bytes() int64 {
	var n int64
	for _, x := range s {
		n += x.end - x.start
	}
	return n
}

// blocks returns the number of blockSize blocks that hold at least one byte of the set:
// what the set occupies in a sparse file.
func (s spans) blocks() int64 {
	var n int64
	last := int64(-1) // last block counted
	for _, x := range s {
		first := x.start / blockSize
		end := (x.end - 1) / blockSize
		if first <= last {
			first = last + 1
		}
		if end >= first {
			n += end - first + 1
			last = end
		}
	}
	return n
}

// union returns a new set holding both a and b.
func union(a, b spans) spans {
	out := make(spans, 0, len(a)+len(b))
	out = append(out, a...)
	for _, x := range b {
		out = out.add(x.start, x.end)
	}
	return out
}
