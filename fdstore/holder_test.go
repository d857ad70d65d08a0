package fdstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A daemon keeps a pipe in the holder it started, and its whole process group is killed with
// SIGKILL; the holder lives on, and the next daemon gets the very same pipe back.
func TestHolderKeepsDescriptorsAcrossDaemons(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	stopHolderAtEnd(t, socket)
	r, w := pipe(t)

	daemon := exec.Command(os.Args[0], "-test.run=^$")
	daemon.Env = append(cleanEnv(), childEnv+"=holder-put", childSocketEnv+"="+socket)
	daemon.ExtraFiles = []*os.File{w}
	daemon.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	daemon.Stderr = os.Stderr
	out, err := daemon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close() // the daemon's copy and, once it Put it, the holder's are the only write ends
	if line := waitLine(t, out, "ready from the first daemon"); line != "ready" {
		daemon.Process.Kill()
		daemon.Wait()
		t.Fatalf("first daemon said %q, want ready", line)
	}

	holder := holderPid(t, socket)
	if sid, err := unix.Getsid(holder); err != nil || sid != holder {
		t.Errorf("holder %d is in session %d (%v), want its own", holder, sid, err)
	}
	if err := syscall.Kill(-daemon.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	daemon.Wait()
	if !alive(holder) {
		t.Fatal("the holder died with the process group of the daemon that started it")
	}
	stillOpen(t, r)

	for path, want := range map[string]os.FileMode{socket: 0o600 | os.ModeSocket, socket + ".pid": 0o600, socket + ".log": 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, %v; want mode %v", path, fi.Mode(), err, want)
		}
	}

	store, files := openHolderStore(t, socket)
	if store.Kind() != "holder" || !slices.Equal(names(files), []string{"pipe"}) {
		t.Fatalf("the next daemon got a %s store and %v, want holder and [pipe]", store.Kind(), names(files))
	}
	if _, err := files["pipe"].Write([]byte("through the holder")); err != nil {
		t.Fatal(err)
	}
	if got := readSome(t, r); got != "through the holder" {
		t.Fatalf("read %q from the pipe, want what went through the descriptor the holder kept", got)
	}

	// Remove really drops it: with the daemon's copy closed, no write end is left.
	files["pipe"].Close()
	if err := store.Remove(context.Background(), "pipe"); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, r); got != "" {
		t.Fatalf("read %q, want EOF", got)
	}
	if _, files := openHolderStore(t, socket); len(files) != 0 {
		t.Fatalf("after Remove the holder still lists %v", names(files))
	}
}

// Put under a kept name replaces (and closes) what was kept; Remove of an unknown name is no
// error; a kept descriptor whose peer is gone is dropped before the next list.
func TestHolderReplacesAndDropsDeadDescriptors(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	stopHolderAtEnd(t, socket)
	ctx := context.Background()
	store, files := openHolderStore(t, socket)
	if len(files) != 0 {
		t.Fatalf("a new holder lists %v", names(files))
	}
	oldR, oldW := pipe(t)
	newR, newW := pipe(t)
	deadR, deadW := pipe(t)
	for _, put := range []struct {
		name string
		f    *os.File
	}{{"layer", oldW}, {"layer", newW}, {"dead", deadW}} {
		if err := store.Put(ctx, put.name, put.f); err != nil {
			t.Fatal(err)
		}
		put.f.Close()
	}
	if err := store.Remove(ctx, "never-kept"); err != nil {
		t.Fatalf("Remove of a name never kept: %v", err)
	}
	if got := readAll(t, oldR); got != "" {
		t.Fatalf("read %q from the replaced pipe, want EOF: the holder must close what it replaces", got)
	}
	stillOpen(t, newR)
	stillOpen(t, deadR)
	deadR.Close() // its kept write end now polls POLLERR

	_, files = openHolderStore(t, socket)
	if !slices.Equal(names(files), []string{"layer"}) {
		t.Fatalf("the holder lists %v, want [layer] (dead dropped)", names(files))
	}
	files["layer"].Write([]byte("new"))
	if got := readSome(t, newR); got != "new" {
		t.Fatalf("layer is not the pipe Put last: read %q", got)
	}
}

// rawRequest sends one raw message with descriptors to the holder and returns its reply.
func rawRequest(t *testing.T, socket string, text []byte, fds ...int) string {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(text, oob, nil); err != nil {
		t.Fatal(err)
	}
	r, err := receive(c)
	if err != nil {
		t.Fatalf("no reply to %.40q: %v", text, err)
	}
	r.closeFDs()
	return string(r.text)
}

// Hostile or broken clients get clear errors, lose the descriptors they sent, and the holder
// goes on serving; an idle client holds nobody up; the descriptor cap holds.
func TestHolderRefusesBadRequests(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	stopHolderAtEnd(t, socket)
	ctx := context.Background()
	store, _ := openHolderStore(t, socket, "/proc/self/exe", "fd-holder", "--max-fds", "2")

	idle, err := net.Dial("unixpacket", socket) // connects and never speaks
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	r, w := pipe(t)
	wfd := int(w.Fd())
	many := make([]int, maxMessageFDs+1)
	for i := range many {
		many[i] = wfd
	}
	for _, tc := range []struct {
		what string
		text string
		fds  []int
		want string
	}{
		{"oversized", strings.Repeat("A", 3*maxMessage), []int{wfd}, "larger than 4096 bytes"},
		{"not KEY=VALUE", "FDSTORE=1\ngarbage", []int{wfd}, `line "garbage" is not KEY=VALUE`},
		{"unknown request", "HELLO=1", []int{wfd}, "unknown request"},
		{"no name", "FDSTORE=1", []int{wfd}, "empty descriptor name"},
		{"colon", "FDSTORE=1\nFDNAME=a:b", []int{wfd}, "printable ASCII without ':'"},
		{"control byte", "FDSTORE=1\nFDNAME=a\tb", []int{wfd}, "printable ASCII without ':'"},
		{"non-ASCII", "FDSTORE=1\nFDNAME=café", []int{wfd}, "printable ASCII without ':'"},
		{"long name", "FDSTORE=1\nFDNAME=" + strings.Repeat("n", MaxNameLen+1), []int{wfd}, "at most 255"},
		{"no descriptor", "FDSTORE=1\nFDNAME=x", nil, "carries 0 descriptors"},
		{"two descriptors", "FDSTORE=1\nFDNAME=x", []int{wfd, wfd}, "carries 2 descriptors"},
		{"too many descriptors", "FDSTORE=1\nFDNAME=x", many, "more than 16 in one message"},
		{"remove with a descriptor", "FDSTOREREMOVE=1\nFDNAME=x", []int{wfd}, "send none"},
		{"list with a descriptor", "LIST=1", []int{wfd}, "send none"},
	} {
		got := rawRequest(t, socket, []byte(tc.text), tc.fds...)
		if !strings.HasPrefix(got, "ERROR=") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: holder replied %q, want ERROR= with %q", tc.what, got, tc.want)
		}
	}
	w.Close()
	if got := readAll(t, r); got != "" {
		t.Fatalf("read %q, want EOF: the holder must close the descriptors of refused requests", got)
	}

	// The client refuses bad names itself.
	if err := store.Put(ctx, "a:b", os.Stdin); err == nil || !strings.Contains(err.Error(), "without ':'") {
		t.Errorf("Put of a bad name: %v", err)
	}

	// At most --max-fds descriptors; replacing one is still possible.
	_, a := pipe(t)
	_, b := pipe(t)
	_, c := pipe(t)
	for _, name := range []string{"a", "b"} {
		if err := store.Put(ctx, name, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Put(ctx, "c", c); err == nil || !strings.Contains(err.Error(), "maximum of 2 descriptors") {
		t.Fatalf("third Put with --max-fds 2: %v, want the maximum named", err)
	}
	if err := store.Put(ctx, "b", b); err != nil {
		t.Fatalf("replacing b at the maximum: %v", err)
	}
	if err := store.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, "c", c); err != nil {
		t.Fatal(err)
	}
	if _, files := openHolderStore(t, socket); !slices.Equal(names(files), []string{"b", "c"}) {
		t.Fatalf("the holder lists %v, want [b c]", names(files))
	}
}

// A second holder on the same socket refuses to start and leaves the first one serving.
func TestSecondHolderRefuses(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	stopHolderAtEnd(t, socket)
	store, _ := openHolderStore(t, socket)
	first := holderPid(t, socket)

	err := RunHolder(context.Background(), socket, quietLog())
	if !errors.Is(err, ErrHolderRunning) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(first)) {
		t.Fatalf("second holder in this process: %v, want ErrHolderRunning naming pid %d", err, first)
	}
	cmd := exec.Command(os.Args[0], "fd-holder", "--socket", socket)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 || !strings.Contains(string(out), "another fd-holder serves this socket") {
		t.Fatalf("second holder process: %v, want exit status 3 and the reason\n%s", err, out)
	}

	if got := holderPid(t, socket); got != first {
		t.Fatalf("pidfile names %d, want the first holder %d", got, first)
	}
	_, w := pipe(t)
	if err := store.Put(context.Background(), "still-serving", w); err != nil {
		t.Fatalf("the first holder stopped serving: %v", err)
	}
}

// Two daemons starting at once each start a holder; one serves, the other leaves, and both
// daemons use the one that serves.
func TestConcurrentStartsShareOneHolder(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	stopHolderAtEnd(t, socket)
	stores := make([]Store, 4)
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stores[i], _, errs[i] = Open(ctx, Options{Mode: ModeHolder, HolderSocket: socket, Log: quietLog()})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("daemon %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	r, w := pipe(t)
	for i, s := range stores {
		if err := s.Put(context.Background(), fmt.Sprintf("from-%d", i), w); err != nil {
			t.Fatal(err)
		}
	}
	_, files := openHolderStore(t, socket)
	if !slices.Equal(names(files), []string{"from-0", "from-1", "from-2", "from-3"}) {
		t.Fatalf("the holder lists %v, want what every daemon put", names(files))
	}
	for _, f := range files {
		f.Close()
	}
	w.Close()
	stillOpen(t, r)
}

// A daemon whose holder is slow to start, while another daemon's holder starts serving, waits
// until its own holder has left: left running, it would take over the socket the day the
// serving holder stops.
func TestSlowLoserHolderLeavesBeforeOpenReturns(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	stopHolderAtEnd(t, socket)
	slow := []string{"sh", "-c", `sleep 1; exec "$0" "$@"`, os.Args[0], "fd-holder"}
	slowDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, _, err := Open(ctx, Options{Mode: ModeHolder, HolderSocket: socket, HolderCommand: slow, Log: quietLog()})
		if err == nil {
			s.Close()
		}
		slowDone <- err
	}()
	for until := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if _, err := os.Stat(socket + ".log"); err == nil {
			break // the slow daemon found no holder and started its own
		}
		if time.Now().After(until) {
			t.Fatal("the slow daemon did not start a holder")
		}
	}
	openHolderStore(t, socket) // starts a quick holder, which serves
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
	if procs := processesNaming(t, socket); len(procs) != 1 || procs[0] != holderPid(t, socket) {
		t.Fatalf("processes naming the socket: %v, want only the serving holder %d", procs, holderPid(t, socket))
	}
}

// processesNaming lists the processes whose command line names s.
func processesNaming(t *testing.T, s string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && strings.Contains(string(cmdline), s) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// A holder killed with SIGKILL leaves its socket file behind; the next Open starts a new one.
func TestDeadHolderIsReplaced(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	stopHolderAtEnd(t, socket)
	store, _ := openHolderStore(t, socket)
	_, w := pipe(t)
	if err := store.Put(context.Background(), "lost", w); err != nil {
		t.Fatal(err)
	}
	first := holderPid(t, socket)
	if err := unix.Kill(first, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holderGone(t, socket)
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("the killed holder's socket file: %v; this test wants it left behind", err)
	}
	if err := store.Put(context.Background(), "again", w); err == nil {
		t.Fatal("Put succeeded with no holder running")
	}

	store, files := openHolderStore(t, socket)
	if len(files) != 0 {
		t.Fatalf("a new holder lists %v", names(files))
	}
	if second := holderPid(t, socket); second == first {
		t.Fatal("pidfile still names the killed holder")
	}
	if err := store.Put(context.Background(), "again", w); err != nil {
		t.Fatal(err)
	}
}

// A holder that cannot start is reported with its log, within the context's deadline.
func TestHolderStartFailureIsReported(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, err := Open(ctx, Options{Mode: ModeHolder, HolderSocket: socket, HolderCommand: []string{"/bin/false"}, Log: quietLog()})
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), socket+".log") {
		t.Fatalf("Open with a holder that exits: %v, want the exit and the log named", err)
	}
}

func TestModeOffKeepsNothing(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	store, files, err := Open(context.Background(), Options{Mode: ModeOff, HolderSocket: socket, Log: quietLog()})
	if err != nil || store.Kind() != "none" || len(files) != 0 {
		t.Fatalf("mode off: %v, %v, %v", store, files, err)
	}
	if err := store.Put(context.Background(), "x", os.Stdin); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mode off started a holder: %v", err)
	}
	if _, _, err := Open(context.Background(), Options{Mode: "sometimes"}); err == nil {
		t.Fatal("an unknown mode was accepted")
	}
}
