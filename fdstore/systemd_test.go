package fdstore

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSystemd is the receiving end of NOTIFY_SOCKET that keeps descriptors as systemd's
// fd store does: FDSTORE=1 adds (names may repeat), FDSTOREREMOVE=1 removes every descriptor
// of a name, and a message with both only removes; descriptors of other messages are closed.
type fakeSystemd struct {
	addr string
	conn *net.UnixConn

	mu       sync.Mutex
	messages int
	store    []storedFD
	changed  chan struct{}
}

type storedFD struct {
	name string
	f    *os.File
}

func startFakeSystemd(t *testing.T, abstract bool) *fakeSystemd {
	t.Helper()
	addr := filepath.Join(t.TempDir(), "notify")
	if abstract {
		addr = fmt.Sprintf("@rill-fdstore-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeSystemd{addr: addr, conn: conn, changed: make(chan struct{}, 1)}
	done := make(chan struct{})
	go s.serve(done)
	t.Cleanup(func() {
		conn.Close()
		<-done
		for _, e := range s.store {
			e.f.Close()
		}
	})
	return s
}

func (s *fakeSystemd) serve(done chan struct{}) {
	defer close(done)
	for {
		r, err := receive(s.conn)
		if err != nil {
			return
		}
		m, _ := parseMessage(r.text)
		s.mu.Lock()
		s.messages++
		switch {
		case m.is(keyRemove):
			s.store = slices.DeleteFunc(s.store, func(e storedFD) bool {
				if e.name == m[keyName] {
					e.f.Close()
					return true
				}
				return false
			})
		case m.is(keyStore):
			for _, fd := range r.fds {
				s.store = append(s.store, storedFD{m[keyName], os.NewFile(uintptr(fd), m[keyName])})
			}
			r.fds = nil
		}
		s.mu.Unlock()
		r.closeFDs()
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}
}

// waitMessages waits until n messages have arrived.
func (s *fakeSystemd) waitMessages(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		got := s.messages
		s.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-s.changed:
		case <-timeout:
			t.Fatalf("fake systemd received %d messages, want %d", got, n)
		}
	}
}

// kept returns what the fake keeps, as systemd passes it at the next start: the descriptors
// (from fd 3 on) and LISTEN_FDS, LISTEN_FDNAMES.
func (s *fakeSystemd) kept() ([]*os.File, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var files []*os.File
	var names []string
	for _, e := range s.store {
		files = append(files, e.f)
		names = append(names, e.name)
	}
	return files, []string{fmt.Sprintf("LISTEN_FDS=%d", len(files)), "LISTEN_FDNAMES=" + strings.Join(names, ":")}
}

// A daemon under systemd stores pipes through NOTIFY_SOCKET (a path or an abstract socket);
// the next daemon, started with them as LISTEN_FDS, gets the very same pipes back by name,
// close-on-exec, with LISTEN_* gone from its environment.
func TestSystemdStoreHandsDescriptorsToTheNextStart(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			systemd := startFakeSystemd(t, abstract)
			t.Setenv("NOTIFY_SOCKET", systemd.addr)
			ctx := context.Background()
			store, files, err := Open(ctx, Options{HolderSocket: filepath.Join(t.TempDir(), "unused.sock"), Log: quietLog()})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			if store.Kind() != "systemd" || len(files) != 0 {
				t.Fatalf("Open under systemd: %s store and %v, want systemd and nothing", store.Kind(), names(files))
			}

			oneR, oneW := pipe(t)
			twoR, twoW := pipe(t)
			oldR, oldW := pipe(t)
			goneR, goneW := pipe(t)
			for _, put := range []struct {
				name string
				f    *os.File
			}{{"one", oldW}, {"two", twoW}, {"one", oneW}, {"gone", goneW}} {
				if err := store.Put(ctx, put.name, put.f); err != nil {
					t.Fatal(err)
				}
				put.f.Close()
			}
			if err := store.Remove(ctx, "gone"); err != nil {
				t.Fatal(err)
			}
			if err := store.Put(ctx, "bad:name", oneW); err == nil {
				t.Fatal("Put of a name systemd would refuse succeeded")
			}
			systemd.waitMessages(t, 4*2+1) // a Put is two messages, a Remove one
			if got := readAll(t, oldR); got != "" {
				t.Fatalf("read %q from the replaced pipe, want EOF", got)
			}
			if got := readAll(t, goneR); got != "" {
				t.Fatalf("read %q from the removed pipe, want EOF", got)
			}

			kept, env := systemd.kept()
			env = append(env, "NOTIFY_SOCKET="+systemd.addr)
			rep := runOpenChild(t, env, kept, true)
			if rep.Kind != "systemd" || !slices.Equal(rep.Names, []string{"one", "two"}) {
				t.Fatalf("next start: %s store and %v, want systemd and [one two]", rep.Kind, rep.Names)
			}
			for name, cloexec := range rep.CloExec {
				if !cloexec {
					t.Errorf("descriptor %s is not close-on-exec after Open", name)
				}
			}
			for k, v := range rep.Env {
				if v != "" {
					t.Errorf("%s is still %s after Open", k, v)
				}
			}
			if got := readSome(t, oneR); got != "via one" {
				t.Errorf("pipe one read %q", got)
			}
			if got := readSome(t, twoR); got != "via two" {
				t.Errorf("pipe two read %q", got)
			}
		})
	}
}

// Descriptors passed for another process (LISTEN_PID is not ours) are left alone, and the
// variables are unset all the same.
func TestSystemdIgnoresDescriptorsOfAnotherProcess(t *testing.T) {
	systemd := startFakeSystemd(t, false)
	r, w := pipe(t)
	rep := runOpenChild(t, []string{"NOTIFY_SOCKET=" + systemd.addr, "LISTEN_PID=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=one"}, []*os.File{w}, false)
	w.Close()
	if rep.Kind != "systemd" || len(rep.Names) != 0 {
		t.Fatalf("got a %s store and %v, want systemd and nothing", rep.Kind, rep.Names)
	}
	for k, v := range rep.Env {
		if v != "" {
			t.Errorf("%s is still %s after Open", k, v)
		}
	}
	if got := readAll(t, r); got != "" {
		t.Fatalf("the child wrote %q through a descriptor that was not its own", got)
	}
}

// Mode systemd without NOTIFY_SOCKET, or with one that is no unix socket, is an error that
// says what to do.
func TestSystemdModeNeedsNotifySocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if _, _, err := Open(context.Background(), Options{Mode: ModeSystemd, Log: quietLog()}); err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET is not set") {
		t.Errorf("mode systemd without NOTIFY_SOCKET: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if _, _, err := Open(context.Background(), Options{Log: quietLog()}); err == nil || !strings.Contains(err.Error(), "mode holder") {
		t.Errorf("NOTIFY_SOCKET on vsock: %v", err)
	}
}
