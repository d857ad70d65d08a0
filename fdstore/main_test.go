package fdstore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// The test binary plays three parts besides running the tests: the fd-holder (started by Open
// as "/proc/self/exe fd-holder --socket PATH", as the daemon's binary would be), and the two
// daemons below, chosen by childEnv.
const (
	childEnv       = "RILL_FDSTORE_TEST_CHILD"
	childSocketEnv = "RILL_FDSTORE_TEST_SOCKET"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "fd-holder" {
		os.Exit(HolderMain(os.Args[2:], os.Stderr))
	}
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "holder-put":
		os.Exit(childHolderPut())
	case "open":
		os.Exit(childOpen())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childEnv, os.Getenv(childEnv))
		os.Exit(2)
	}
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// childHolderPut is a daemon that keeps its descriptor 3 in the holder under "pipe", says
// "ready" and waits to be killed.
func childHolderPut() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, _, err := Open(ctx, Options{Mode: ModeHolder, HolderSocket: os.Getenv(childSocketEnv), Log: quietLog()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := store.Put(ctx, "pipe", os.NewFile(3, "pipe")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	time.Sleep(time.Hour)
	return 0
}

// openReport is what childOpen saw.
type openReport struct {
	Kind    string
	Names   []string
	Env     map[string]string // LISTEN_* after Open ("" when unset)
	CloExec map[string]bool
}

// childOpen is a daemon starting up: it opens the store (mode auto), reports what it got,
// and writes "via NAME" through every descriptor it got back.
func childOpen() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, files, err := Open(ctx, Options{HolderSocket: os.Getenv(childSocketEnv), Log: quietLog()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	rep := openReport{Kind: store.Kind(), Names: []string{}, Env: map[string]string{}, CloExec: map[string]bool{}}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		v, ok := os.LookupEnv(k)
		if ok {
			v = "set:" + v
		}
		rep.Env[k] = v
	}
	for name, f := range files {
		rep.Names = append(rep.Names, name)
		raw, err := f.SyscallConn()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		raw.Control(func(fd uintptr) {
			flags, err := unix.FcntlInt(fd, unix.F_GETFD, 0)
			rep.CloExec[name] = err == nil && flags&unix.FD_CLOEXEC != 0
		})
		if _, err := f.Write([]byte("via " + name)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		f.Close()
	}
	sort.Strings(rep.Names)
	json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

// runOpenChild runs childOpen with env added and extra descriptors from fd 3; with sameSh, through
// `sh -c 'LISTEN_PID=$$ exec ...'` so that LISTEN_PID names the process that calls Open.
func runOpenChild(t *testing.T, env []string, extra []*os.File, viaSh bool) openReport {
	t.Helper()
	args := []string{os.Args[0], "-test.run=^$"}
	if viaSh {
		args = append([]string{"sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(cleanEnv(), append([]string{childEnv + "=open"}, env...)...)
	cmd.ExtraFiles = extra
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("daemon child: %v\n%s", err, stderr.String())
	}
	var rep openReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("daemon child's report %q: %v\n%s", out, err, stderr.String())
	}
	return rep
}

// cleanEnv is the test's environment without what would steer Open.
func cleanEnv() []string {
	return holderEnv(os.Environ())
}

// pipe returns a pipe whose ends are closed at the end of the test (closing twice is harmless).
func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// readAll reads what the pipe holds until every write end is closed; a deadline fails the test.
func readAll(t *testing.T, r *os.File) string {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v (a write end is still open somewhere)", r.Name(), err)
	}
	return string(b)
}

// readSome reads what was written so far.
func readSome(t *testing.T, r *os.File) string {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	n, err := r.Read(buf)
	if err != nil {
		t.Fatalf("read %s: %v", r.Name(), err)
	}
	return string(buf[:n])
}

// stillOpen proves that some write end of r's pipe is still open: the read end sees no EOF.
// (Once every write end is closed, EOF comes at once, so a wait that ends in a timeout is no
// guess.)
func stillOpen(t *testing.T, r *os.File) {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	n, err := r.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %s: %d bytes, %v; want a timeout: the write end was kept", r.Name(), n, err)
	}
}

// holderPid reads the pidfile beside socket.
func holderPid(t *testing.T, socket string) int {
	t.Helper()
	b, err := os.ReadFile(socket + ".pid")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pidfile: %v", err)
	}
	return pid
}

// alive is whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// holderGone waits until no holder holds socket's pidfile lock (it is released when the
// process ends, even as a zombie nobody reaps).
func holderGone(t *testing.T, socket string) {
	t.Helper()
	until := time.Now().Add(10 * time.Second)
	for {
		f, err := os.Open(socket + ".pid")
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		f.Close()
		if err == nil {
			return
		}
		if time.Now().After(until) {
			t.Fatalf("the holder on %s did not stop\n%s", socket, holderDiagnostics(socket))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holderDiagnostics describes a holder that does not behave: its pidfile, its process, and its
// log with a goroutine dump (SIGQUIT).
func holderDiagnostics(socket string) string {
	pidText, _ := os.ReadFile(socket + ".pid")
	out := fmt.Sprintf("pidfile: %q\n", pidText)
	if pid, err := strconv.Atoi(strings.TrimSpace(string(pidText))); err == nil && pid > 1 {
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		out += fmt.Sprintf("process %d:\n%s\n", pid, status)
		unix.Kill(pid, unix.SIGQUIT)
		time.Sleep(time.Second)
	}
	locks, _ := os.ReadFile("/proc/locks")
	log, _ := os.ReadFile(socket + ".log")
	return out + fmt.Sprintf("/proc/locks:\n%s\nlog:\n%s", locks, log)
}

// stopHolderAtEnd stops the holder serving socket when the test ends.
func stopHolderAtEnd(t *testing.T, socket string) {
	t.Cleanup(func() {
		if b, err := os.ReadFile(socket + ".pid"); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				unix.Kill(pid, unix.SIGTERM)
			}
		}
		holderGone(t, socket)
	})
}

// openHolderStore opens a holder store on socket (starting the holder: this test binary).
func openHolderStore(t *testing.T, socket string, command ...string) (Store, map[string]*os.File) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, files, err := Open(ctx, Options{Mode: ModeHolder, HolderSocket: socket, HolderCommand: command, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		store.Close()
		for _, f := range files {
			f.Close()
		}
	})
	return store, files
}

func names(files map[string]*os.File) []string {
	n := make([]string, 0, len(files))
	for name := range files {
		n = append(n, name)
	}
	sort.Strings(n)
	return n
}

// waitLine reads one line from r, or fails the test after a deadline.
func waitLine(t *testing.T, r io.Reader, what string) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		return strings.TrimSpace(line)
	case <-time.After(30 * time.Second):
		t.Fatalf("no %s within 30 s", what)
		return ""
	}
}
