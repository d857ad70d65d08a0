// Command reader runs inside a test container and reads the image's files in a loop, checking
// each read against the sha256 the image lists for the file, while the test restarts, kills or
// upgrades rill-snapshotter under it.
//
// The list (-list, in sha256sum's format: "<hex>  <path>" per line) is read once at start.
// Then, every pass, the reader
//
//   - reads one of the files it keeps open since its start (-hold of them) again with pread,
//     the page cache dropped first (posix_fadvise DONTNEED), so the read reaches the file
//     system through a handle opened before any restart ("held");
//   - opens, reads and closes a file it has read before, page cache dropped ("again");
//   - every -new-every, opens and reads a file it has never read, in the list's order ("new"),
//     so that files are first read after each restart too.
//
// It writes one line per read to stdout:
//
//	read seq=12 kind=new start=<unix ns> dur=<ns> bytes=4096 path=/data/f0001
//
// and at the first failed or wrong read a line "error seq=... kind=... start=... dur=...
// path=... err=<text>" (also on stderr), then exits 1. With -once it reads every listed file
// once, prints "done files=<n>" and exits 0.
//
// Before anything else it copies itself to /dev/shm (or /tmp) and runs from there: its own
// code must not page-fault on the file system under test (a dead FUSE connection would end it
// with SIGBUS instead of the error this program reports). It is built static
// (CGO_ENABLED=0).
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type file struct {
	path string
	sum  string
}

func main() {
	list := flag.String("list", "/data/SHA256SUMS", "the files to read and their sha256, in sha256sum's format")
	hold := flag.Int("hold", 4, "files opened at start and kept open, read again through that handle")
	newEvery := flag.Duration("new-every", 100*time.Millisecond, "how often a file never read before is read")
	pause := flag.Duration("pause", 20*time.Millisecond, "pause between passes")
	once := flag.Bool("once", false, "read every file once, then exit")
	relocated := flag.Bool("relocated", false, "internal: already running from a copy outside the image")
	flag.Parse()

	if !*relocated {
		relocate()
	}
	files, err := readList(*list)
	if err != nil {
		fail(0, "list", time.Now(), 0, *list, err)
	}
	r := &reader{files: files}
	if *once {
		for i := range files {
			r.readFile("new", i)
		}
		fmt.Printf("done files=%d\n", len(files))
		return
	}
	for i := 0; i < *hold && i < len(files); i++ {
		f, err := os.Open(files[i].path)
		if err != nil {
			fail(r.seq, "open-held", time.Now(), 0, files[i].path, err)
		}
		r.held = append(r.held, f)
		r.readHeld(i)
		r.next++
	}
	fmt.Printf("started files=%d held=%d\n", len(files), len(r.held))
	lastNew := time.Now()
	for pass := 0; ; pass++ {
		if len(r.held) > 0 {
			r.readHeld(pass % len(r.held))
		}
		if r.next > len(r.held) {
			// Files read before and not held: those between the held ones and the next new one.
			r.readFile("again", len(r.held)+pass%(r.next-len(r.held)))
		}
		if time.Since(lastNew) >= *newEvery || r.next == len(r.held) {
			if r.next < len(files) {
				r.readFile("new", r.next)
				r.next++
				if r.next == len(files) {
					fmt.Println("exhausted: every file has been read")
				}
			}
			lastNew = time.Now()
		}
		time.Sleep(*pause)
	}
}

type reader struct {
	files []file
	held  []*os.File // files[i] for i < len(held)
	next  int        // files[:next] have been read
	seq   int
	buf   bytes.Buffer
}

// readHeld reads files[i] again through the handle opened at start.
func (r *reader) readHeld(i int) {
	r.seq++
	f, want := r.held[i], r.files[i]
	start := time.Now()
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	r.buf.Reset()
	_, err := io.Copy(&r.buf, io.NewSectionReader(f, 0, 1<<40))
	r.check("held", start, want, err)
}

// readFile opens, reads and closes files[i].
func (r *reader) readFile(kind string, i int) {
	r.seq++
	want := r.files[i]
	start := time.Now()
	f, err := os.Open(want.path)
	if err == nil {
		if kind != "new" {
			_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		r.buf.Reset()
		_, err = io.Copy(&r.buf, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	r.check(kind, start, want, err)
}

func (r *reader) check(kind string, start time.Time, want file, err error) {
	dur := time.Since(start)
	if err == nil {
		sum := sha256.Sum256(r.buf.Bytes())
		if got := hex.EncodeToString(sum[:]); got != want.sum {
			err = fmt.Errorf("content mismatch: %d bytes with sha256 %s, want %s", r.buf.Len(), got, want.sum)
		}
	}
	if err != nil {
		fail(r.seq, kind, start, dur, want.path, err)
	}
	fmt.Printf("read seq=%d kind=%s start=%d dur=%d bytes=%d path=%s\n", r.seq, kind, start.UnixNano(), dur.Nanoseconds(), r.buf.Len(), want.path)
}

func fail(seq int, kind string, start time.Time, dur time.Duration, path string, err error) {
	msg := fmt.Sprintf("error seq=%d kind=%s start=%d dur=%d path=%s err=%v", seq, kind, start.UnixNano(), dur.Nanoseconds(), path, err)
	fmt.Println(msg)
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

func readList(path string) ([]file, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var files []file
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, p, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			return nil, fmt.Errorf("%s: bad line %q", path, sc.Text())
		}
		files = append(files, file{path: p, sum: sum})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, errors.New(path + ": no files")
	}
	return files, nil
}

// relocate copies this binary out of the image and executes the copy (with -relocated).
func relocate() {
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		fail(0, "relocate", time.Now(), 0, "/proc/self/exe", err)
	}
	var errs []error
	for _, dir := range []string{"/dev/shm", "/tmp"} {
		if err := os.MkdirAll(dir, 0o1777); err != nil {
			errs = append(errs, err)
			continue
		}
		dst := filepath.Join(dir, "reader")
		if err := os.WriteFile(dst, self, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		args := append([]string{dst, "-relocated"}, os.Args[1:]...)
		err := syscall.Exec(dst, args, os.Environ())
		errs = append(errs, fmt.Errorf("exec %s: %w", dst, err)) // /dev/shm may be noexec
	}
	fail(0, "relocate", time.Now(), 0, "/proc/self/exe", errors.Join(errs...))
}
