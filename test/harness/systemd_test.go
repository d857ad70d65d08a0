package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/rillstream/rill/fdstore"
)

// TestMain runs this test binary as the service of TestFakeSystemdKeepsAndPassesDescriptors
// when it is started as one.
func TestMain(m *testing.M) {
	if report := os.Getenv("RILL_FAKE_SYSTEMD_SERVICE"); report != "" {
		os.Exit(fakeService(report))
	}
	os.Exit(m.Run())
}

// serviceReport is what fakeService saw.
type serviceReport struct {
	Kind       string
	Names      []string // the descriptors fdstore.Open got back, sorted
	OwnPID     bool     // LISTEN_PID was this process's pid
	ListenFDs  string
	RoundTrip  string // read from pipe-r after writing to pipe-w, when they came back
	Old        string // the file kept as "old"
	OpenErrors []string
}

// fakeService is a daemon under the fake systemd, using rill's fdstore as rill-snapshotter does:
// it reports what it got back, then keeps a pipe (both ends), replaces a descriptor, removes
// one, keeps a pipe whose reader it closes (it hangs up), and says READY=1 and STOPPING=1.
func fakeService(reportPath string) int {
	var rep serviceReport
	rep.OwnPID = os.Getenv("LISTEN_PID") == fmt.Sprint(os.Getpid())
	rep.ListenFDs = os.Getenv("LISTEN_FDS")
	ctx := context.Background()
	log := logrus.New()
	log.SetOutput(os.Stderr)
	store, kept, err := fdstore.Open(ctx, fdstore.Options{Mode: fdstore.ModeSystemd, Log: logrus.NewEntry(log)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rep.Kind = store.Kind()
	for name := range kept {
		rep.Names = append(rep.Names, name)
	}
	sort.Strings(rep.Names)
	if f := kept["old"]; f != nil {
		rep.Old, _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	}
	if w, r := kept["pipe-w"], kept["pipe-r"]; w != nil && r != nil {
		if _, err := w.Write([]byte("hello")); err != nil {
			rep.OpenErrors = append(rep.OpenErrors, err.Error())
		}
		buf := make([]byte, 16)
		n, _ := r.Read(buf)
		rep.RoundTrip = string(buf[:n])
	}
	if len(kept) == 0 {
		put := func(name string, f *os.File) {
			if err := store.Put(ctx, name, f); err != nil {
				rep.OpenErrors = append(rep.OpenErrors, err.Error())
			}
		}
		var p [2][2]*os.File
		for i := range p {
			r, w, err := os.Pipe()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			p[i] = [2]*os.File{r, w}
		}
		put("pipe-r", p[0][0])
		put("pipe-w", p[0][1])
		// Files, not pipes: a pipe whose other end this process alone holds hangs up when it exits.
		for _, f := range []string{"a", "b"} {
			f, err := os.Create(filepath.Join(filepath.Dir(reportPath), f))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			put("old", f) // b replaces a
		}
		put("gone", p[1][1])
		if err := store.Remove(ctx, "gone"); err != nil {
			rep.OpenErrors = append(rep.OpenErrors, err.Error())
		}
		if same, err := os.Create(filepath.Join(filepath.Dir(reportPath), "same")); err == nil {
			put("same-1", same)
			put("same-2", same) // the very same file: systemd keeps it once, as same-1
		}
		hr, hw, err := os.Pipe()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		put("hup", hw)
		hr.Close() // the kept write end now polls POLLERR
	}
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		rep.OpenErrors = append(rep.OpenErrors, err.Error())
	}
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	data, _ := json.Marshal(rep)
	if err := os.WriteFile(reportPath, data, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// The fake systemd keeps what a daemon stores with rill's fdstore (replaced, removed, ignored
// from other processes, dropped when hung up) and passes it to the next start as systemd does:
// LISTEN_FDS from fd 3, LISTEN_FDNAMES, and LISTEN_PID equal to the new process's own pid.
func TestFakeSystemdKeepsAndPassesDescriptors(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	m, err := StartFakeSystemd(filepath.Join(dir, "systemd"), filepath.Join(dir, "fake-systemd.log"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	report := filepath.Join(dir, "report.json")
	t.Setenv("RILL_FAKE_SYSTEMD_SERVICE", report)
	run := func() (serviceReport, int) {
		t.Helper()
		os.Remove(report)
		proc, err := m.start(ctx, "service", filepath.Join(dir, "service.log"), os.Args[0], "-test.run=^$")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-proc.done:
		case <-time.After(time.Minute):
			t.Fatal("the service did not exit within a minute")
		}
		if err := proc.exitError(); err != nil {
			t.Fatalf("%v; its log:\n%s", err, tailFile(filepath.Join(dir, "service.log"), 20))
		}
		data, err := os.ReadFile(report)
		if err != nil {
			t.Fatal(err)
		}
		var rep serviceReport
		if err := json.Unmarshal(data, &rep); err != nil {
			t.Fatal(err)
		}
		if len(rep.OpenErrors) > 0 {
			t.Fatalf("the service: %v", rep.OpenErrors)
		}
		return rep, proc.PID()
	}

	first, pid1 := run()
	if first.Kind != "systemd" || len(first.Names) != 0 || first.ListenFDs != "" {
		t.Fatalf("first start: %+v, want a systemd store and nothing passed", first)
	}
	if err := m.sync(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got, want := m.Kept(), []string{"pipe-r", "pipe-w", "old", "same-1", "hup"}; !slices.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
	if !m.Notified(pid1, "READY", "1") || !m.Notified(pid1, "STOPPING", "1") {
		t.Errorf("READY=1 and STOPPING=1 of pid %d not recorded: %+v", pid1, m.Notifications())
	}

	// A descriptor from another process (this one) is not kept: NotifyAccess=main.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Sendmsg(sock, []byte("FDSTORE=1\nFDNAME=intruder"), unix.UnixRights(int(w.Fd())), &unix.SockaddrUnix{Name: m.NotifySocket()}, 0)
	unix.Close(sock)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := m.sync(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(m.Kept(), "intruder") {
		t.Fatal("the fake keeps a descriptor sent by a process that is not the service's main one")
	}
	if n, _ := r.Read(make([]byte, 1)); n != 0 {
		t.Fatal("the intruder's pipe is still open")
	}

	second, pid2 := run()
	if !second.OwnPID || second.ListenFDs != "4" {
		t.Errorf("second start: LISTEN_PID own %v, LISTEN_FDS %q; want its own pid and 4", second.OwnPID, second.ListenFDs)
	}
	if want := []string{"old", "pipe-r", "pipe-w", "same-1"}; second.Kind != "systemd" || !slices.Equal(second.Names, want) {
		t.Fatalf("second start got %s store and %v, want systemd and %v (same-2 the same file as same-1, hup dropped)", second.Kind, second.Names, want)
	}
	if filepath.Base(second.Old) != "b" {
		t.Errorf("\"old\" passed again is %q, want the file b that replaced a", second.Old)
	}
	if second.RoundTrip != "hello" {
		t.Errorf("the kept pipe's ends, passed again, read %q, want hello", second.RoundTrip)
	}
	if got := m.DroppedOnHangup(); !slices.Equal(got, []string{"hup"}) {
		t.Errorf("dropped on hangup: %v, want [hup]", got)
	}
	starts := m.Starts()
	if len(starts) != 2 || starts[1].PID != pid2 || !slices.Equal(starts[1].Names, []string{"pipe-r", "pipe-w", "old", "same-1"}) {
		t.Errorf("starts %+v", starts)
	}
	// Kept across the start: preserved for the next one.
	if got := m.Kept(); !slices.Equal(got, []string{"pipe-r", "pipe-w", "old", "same-1"}) {
		t.Errorf("kept after the second start: %v", got)
	}
}
