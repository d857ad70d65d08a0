package harness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MountsUnder returns the mount points at or below dir, from /proc/self/mountinfo, deepest first.
func MountsUnder(dir string) ([]string, error) {
	mounts, err := mountsUnder(dir)
	paths := make([]string, len(mounts))
	for i, m := range mounts {
		paths[i] = m.path
	}
	return paths, err
}

// mount is a line of the mount table.
type mount struct {
	path   string
	fstype string // "overlay", "fuse.rill"...
}

func (m mount) String() string { return m.path + " (" + m.fstype + ")" }

// mountsUnder returns the mounts at or below dir, deepest first.
func mountsUnder(dir string) ([]mount, error) {
	dir = filepath.Clean(dir)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	defer f.Close()
	var mounts []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		if mp != dir && !strings.HasPrefix(mp, dir+"/") {
			continue
		}
		m := mount{path: mp}
		// The file system type follows the " - " separator after the optional fields.
		if i := slices.Index(fields, "-"); i >= 0 && i+1 < len(fields) {
			m.fstype = fields[i+1]
		}
		mounts = append(mounts, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	// Deepest first, and a later (stacked) mount before an earlier one on the same point.
	slices.Reverse(mounts)
	slices.SortStableFunc(mounts, func(a, b mount) int {
		return strings.Count(b.path, "/") - strings.Count(a.path, "/")
	})
	return mounts, nil
}

// unescapeMountPath decodes the octal escapes (\040 for a space...) of mountinfo paths.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// UnmountAll unmounts everything at or below dir (lazily when a mount is busy) and fails if
// anything stays mounted.
func UnmountAll(dir string) error {
	for range 5 {
		mounts, err := MountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mounts) == 0 {
			return nil
		}
		for _, m := range mounts {
			if err := unix.Unmount(m, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				_ = unix.Unmount(m, unix.MNT_DETACH)
			}
		}
	}
	mounts, err := MountsUnder(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("still mounted below %s after unmounting: %s", dir, strings.Join(mounts, ", "))
	}
	return nil
}
