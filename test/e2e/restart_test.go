package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/rillstream/rill/snapshotter"
	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// The restart image: two layers of small pseudo-random files (incompressible, so that every
// file is its own range of the blob) and a top layer with the reader (test/cmd/reader) and the
// list of every file with its sha256, computed here from the originals. The list is shuffled,
// so the reader's first reads of files spread over both layers and the whole blobs.
const (
	restartFiles    = 800 // 2 to 12 KiB each: about 5.5 MB in all
	restartList     = "/data/SHA256SUMS"
	restartNewEvery = 150 * time.Millisecond // the reader's pace of first reads: 800 files last 2 minutes
	// restartBound bounds every wait for the reader: after a restart, its reads go on within
	// it, or the test calls it a hang.
	restartBound = time.Minute
)

// readerCommand is the reader's command line: forever, with files kept open since its start.
func readerCommand() []string {
	return []string{"/reader", "-list", restartList, "-hold", "4", "-new-every", restartNewEvery.String(), "-pause", "50ms"}
}

// TestRestart restarts rill-snapshotter under a running container that reads a streamed
// image's files in a loop (test/cmd/reader: every read checked against the sha256 of the
// original, files never read before included after every restart, and files held open since
// before the first restart): (a) SIGTERM and start, (b) SIGKILL and start, (c) an upgrade to a
// freshly built binary at another path. The container must see no error and go on reading;
// the longest read across each restart (the stall the container sees) is measured and logged,
// never asserted:
//
//	restart stall (a) SIGTERM: longest read 123.4ms ...
//
// Then (d) the fd-holder dies: the running container may lose its files (the connections only
// the holder kept are gone) but nothing hangs, rill comes back healthy and a new container of
// the same image reads every file correctly.
//
// Last, (e) rill-snapshotter runs under systemd — a fake one (harness.FakeSystemd: no systemd
// runs here), which keeps what the daemon sends with FDSTORE=1 on NOTIFY_SOCKET and passes it
// back as LISTEN_FDS, as systemd does — with `[fdstore] mode = "systemd"`, and a new reader
// goes on reading across a SIGTERM and a SIGKILL restart, its connections kept by the fake
// alone (no fd-holder runs).
func TestRestart(t *testing.T) {
	// No background fetch: a file no container has read stays remote, so that first reads after
	// a restart are served by the new process from the registry.
	metrics, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	env := startEnvWith(t, harness.Options{Logf: t.Logf, MetricsAddress: metrics, SnapshotterStreaming: []string{"background_fetch = false"}})
	ctx := t.Context()

	var (
		wg                 sync.WaitGroup
		upgradeBin         string
		upgradeErr         error
		original           *images.TestImage
		imageErr           error
		imageBuildDuration time.Duration
	)
	wg.Go(func() { upgradeBin, upgradeErr = env.BuildSnapshotter(ctx, "upgrade") })
	wg.Go(func() {
		began := time.Now()
		original, imageErr = restartImage(ctx, env.RepoRoot, t.TempDir())
		imageBuildDuration = time.Since(began)
	})
	wg.Wait()
	if imageErr != nil {
		t.Fatalf("building the restart image: %v", imageErr)
	}
	t.Logf("built the restart image (%d files) in %s", restartFiles, imageBuildDuration.Round(time.Millisecond))
	img := pushStreamed(t, env, original)
	if _, err := env.CRI.Pull(ctx, img.Ref); err != nil {
		t.Fatalf("crictl pull %s: %v", img.Ref, err)
	}
	assertStreamed(t, env, img.PushedImage, "estargz")
	assertLayersServed(t, env, img)

	var rd *readerRun
	t.Cleanup(func() {
		if rd != nil {
			_ = rd.c.Remove(context.Background())
		}
	})
	cases := []struct {
		label, what string
		restart     func(ctx context.Context) error
	}{
		{"a", "SIGTERM", func(ctx context.Context) error { return env.RestartSnapshotter(ctx, harness.RestartTerm) }},
		{"b", "SIGKILL", func(ctx context.Context) error { return env.RestartSnapshotter(ctx, harness.RestartKill) }},
		{"c", "upgrade", func(ctx context.Context) error {
			if upgradeErr != nil {
				return fmt.Errorf("building the new binary: %w", upgradeErr)
			}
			env.Snapshotter.SetBinary(upgradeBin)
			return env.RestartSnapshotter(ctx, harness.RestartTerm)
		}},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("(%s) %s", c.label, c.what), func(t *testing.T) {
			rd = ensureReader(t, env, img, rd)
			testRestartUnderReader(t, env, img, rd, c.label, c.what, c.restart)
			if c.what == "upgrade" {
				assertRunsBinary(t, env, upgradeBin)
			}
		})
	}
	t.Run("(d) the fd-holder dies", func(t *testing.T) {
		rd = ensureReader(t, env, img, rd)
		testHolderDeath(t, env, img, rd)
	})
	t.Run("(e) under systemd's fd store (fake)", func(t *testing.T) {
		testUnderFakeSystemd(t, env, img, &rd)
	})
}

// testRestartUnderReader restarts rill-snapshotter (restart) while rd reads: rd must see no
// error, and read files held open since before, files read before and files never read before
// after the restart, all correct. It logs the stall.
func testRestartUnderReader(t *testing.T, env *harness.Env, img pushedImage, rd *readerRun, label, what string, restart func(context.Context) error) {
	ctx := t.Context()
	rd.waitReads(t, time.Now(), readCounts{"new": 2}, restartBound) // reading now
	holderBefore := "none"
	if pid, err := env.Snapshotter.HolderPID(); err == nil {
		holderBefore = strconv.Itoa(pid)
	}
	pidBefore := env.Snapshotter.Process().PID()

	signalled := time.Now()
	if err := restart(ctx); err != nil {
		t.Fatalf("restart (%s) %s: %v", label, what, err)
	}
	ready := time.Now()
	t.Logf("(%s) %s: rill-snapshotter pid %d → %d, ready again (containerd reaches it) after %s; fd-holder pid %s before",
		label, what, pidBefore, env.Snapshotter.Process().PID(), ready.Sub(signalled).Round(time.Millisecond), holderBefore)

	// The reader goes on: files it holds open since its start, files it read before and files
	// it never read, each read after the restart, each correct.
	log := rd.waitReads(t, ready, readCounts{"new": 3, "held": 2, "again": 2}, restartBound)
	done := time.Now()
	longest, in := stall(log.reads, signalled, done)
	t.Logf("restart stall (%s) %s: longest read %s (%s %s; %d reads overlap the %s from the signal until %d files never read before were read after the restart; rill ready %s after the signal)",
		label, what, msString(longest.dur), longest.kind, longest.path, in, done.Sub(signalled).Round(time.Millisecond), 3, ready.Sub(signalled).Round(time.Millisecond))
	if holderAfter, err := env.Snapshotter.HolderPID(); err == nil {
		t.Logf("(%s) %s: fd-holder pid %d after the restart", label, what, holderAfter)
	}
	assertLayersServed(t, env, img)
}

// testHolderDeath kills the fd-holder (SIGKILL) under a running reader, then restarts
// rill-snapshotter (SIGTERM): the old container may lose its files — an error, never a hang
// and never wrong bytes — while rill comes back healthy (its layers served, a new holder) and a
// new container of the same image reads every file correctly.
func testHolderDeath(t *testing.T, env *harness.Env, img pushedImage, rd *readerRun) {
	ctx := t.Context()
	rd.waitReads(t, time.Now(), readCounts{"new": 2}, restartBound)
	holder, err := env.Snapshotter.HolderPID()
	if err != nil {
		t.Fatalf("no fd-holder to kill: %v", err)
	}
	if err := env.Snapshotter.KillHolder(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("(d) killed the fd-holder (pid %d) with SIGKILL", holder)
	if err := env.RestartSnapshotter(ctx, harness.RestartTerm); err != nil {
		t.Fatalf("restarting rill-snapshotter after its fd-holder died: %v", err)
	}
	ready := time.Now()

	// The old container: an error (the expected loss of its files) or reads that go on
	// correctly, within the bound; never a hang, never wrong content.
	log, ended := rd.waitOutcome(t, ready, readCounts{"new": 3, "held": 2, "again": 2}, restartBound)
	switch {
	case ended && strings.Contains(log.errLine, "content mismatch"):
		t.Errorf("(d) the old container read wrong content after the fd-holder died: %s", log.errLine)
	case ended:
		t.Logf("(d) the old container lost its files, as expected when the fd-holder dies: %s", firstNonEmpty(log.errLine, log.tail()))
	default:
		t.Logf("(d) the old container still reads correctly after the fd-holder died and rill restarted")
	}
	if err := rd.c.Remove(ctx); err != nil {
		t.Errorf("removing the old container: %v", err)
	}

	// rill is healthy: its layers served, a new fd-holder, and a new container reads everything.
	assertLayersServed(t, env, img)
	if pid, err := env.Snapshotter.HolderPID(); err != nil {
		t.Errorf("(d) no fd-holder runs after rill-snapshotter restarted: %v", err)
	} else if pid == holder {
		t.Errorf("(d) the fd-holder killed (pid %d) still serves", holder)
	} else {
		t.Logf("(d) a new fd-holder runs (pid %d)", pid)
	}
	res, err := env.CRI.RunInPod(ctx, "restart-reader-new", img.Ref, []string{"/reader", "-list", restartList, "-once"}, 2*time.Minute)
	if err != nil {
		t.Fatalf("(d) a new container of the image after the fd-holder died: %v", err)
	}
	if want := fmt.Sprintf("done files=%d\n", restartFiles); res.ExitCode != 0 || !strings.HasSuffix(res.Stdout, want) {
		t.Errorf("(d) a new container reading every file once: exit %d, stderr %q, stdout ends with:\n%s", res.ExitCode, res.Stderr, lastLines(res.Stdout, 5))
	} else {
		t.Logf("(d) a new container read all %d files correctly in %s", restartFiles, res.Duration.Round(time.Millisecond))
	}
}

// testUnderFakeSystemd moves rill-snapshotter under a fake systemd (case e): the reader of the
// cases before goes (its connections are the fd-holder's, which a daemon under systemd does
// not get), the daemon stops (SIGTERM), then its fd-holder, and it starts again through the
// fake, with fdstore mode systemd. It must keep its layers' connections in the fake's store
// (FDSTORE=1 for every layer, no fd-holder), and a new reader must go on reading across a
// SIGTERM and a SIGKILL restart, the new daemon getting the connections as LISTEN_FDS.
func testUnderFakeSystemd(t *testing.T, env *harness.Env, img pushedImage, rd **readerRun) {
	ctx := t.Context()
	if *rd != nil {
		// (d) removes its reader: a container crictl no longer knows is gone already.
		if _, _, err := (*rd).c.State(ctx); err == nil {
			if err := (*rd).c.Remove(ctx); err != nil {
				t.Fatalf("removing the reader container of the cases before: %v", err)
			}
		}
		*rd = nil
	}
	if err := env.Snapshotter.Stop(ctx); err != nil {
		t.Fatalf("stopping rill-snapshotter to run it under the fake systemd: %v", err)
	}
	holder, err := env.Snapshotter.StopHolder(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A holder the daemon starts appends to this log: it must not grow from now on.
	holderLog := fileSize(env.Snapshotter.HolderLogPath())
	if err := env.Snapshotter.SetFDStore(`mode = "systemd"`); err != nil {
		t.Fatal(err)
	}
	systemd, err := env.StartFakeSystemd()
	if err != nil {
		t.Fatal(err)
	}
	if err := env.StartSnapshotter(ctx); err != nil {
		t.Fatalf("starting rill-snapshotter under the fake systemd: %v", err)
	}
	first := env.Snapshotter.Process().PID()
	t.Logf("(e) rill-snapshotter (pid %d) runs under a fake systemd, NOTIFY_SOCKET=%s; the fd-holder (pid %d) stopped", first, systemd.NotifySocket(), holder)
	assertLayersServed(t, env, img)
	names := layerFDNames(t, env, img)
	assertNoHolder(t, env, holderLog, "under the fake systemd")

	// Every layer's connection was sent to the fake's store, by the daemon itself.
	stored := map[string]int{}
	for _, n := range systemd.Notifications() {
		if n.Accepted && n.PID == first && n.Fields["FDSTORE"] == "1" {
			stored[n.Fields["FDNAME"]] += n.FDs
		}
	}
	for _, name := range names {
		if stored[name] != 1 {
			t.Errorf("(e) the fake systemd received %d descriptors with FDSTORE=1 FDNAME=%s from rill-snapshotter (pid %d), want 1", stored[name], name, first)
		}
	}
	assertKept(t, systemd, names, "at the start under the fake systemd")
	t.Logf("(e) the fake systemd keeps %d descriptors (%d layers of the image): %s", len(systemd.Kept()), len(names), strings.Join(systemd.Kept(), " "))
	if t.Failed() {
		t.FailNow()
	}

	for _, how := range []harness.RestartHow{harness.RestartTerm, harness.RestartKill} {
		t.Run(how.String(), func(t *testing.T) {
			*rd = ensureReader(t, env, img, *rd)
			before := env.Snapshotter.Process().PID()
			testRestartUnderReader(t, env, img, *rd, "e", how.String()+" under fake systemd", func(ctx context.Context) error {
				return env.RestartSnapshotter(ctx, how)
			})
			after := env.Snapshotter.Process().PID()
			starts := systemd.Starts()
			last := starts[len(starts)-1]
			if last.PID != after {
				t.Fatalf("(e) rill-snapshotter runs as pid %d, but the fake systemd last started pid %d", after, last.PID)
			}
			for _, name := range names {
				if !slices.Contains(last.Names, name) {
					t.Errorf("(e) the fake systemd did not pass %s to the new rill-snapshotter (LISTEN_FDNAMES=%s)", name, strings.Join(last.Names, ":"))
				}
			}
			if how == harness.RestartTerm && !systemd.Notified(before, "STOPPING", "1") {
				t.Errorf("(e) rill-snapshotter (pid %d) stopped on SIGTERM without STOPPING=1", before)
			}
			if !systemd.Notified(after, "READY", "1") {
				t.Errorf("(e) no READY=1 from the new rill-snapshotter (pid %d)", after)
			}
			assertNoHolder(t, env, holderLog, "after the restart under the fake systemd")
			assertKept(t, systemd, names, "after the restart")
			t.Logf("(e) %s: pid %d → %d got %d descriptors from the fake systemd (LISTEN_FDS), which keeps them still", how, before, after, len(last.Names))
		})
	}
	if dropped := systemd.DroppedOnHangup(); len(dropped) > 0 {
		t.Logf("(e) the fake systemd dropped hung-up descriptors: %v", dropped)
	}
}

// layerFDNames are the names rill keeps img's layers' connections under: layer-<snapshot id>.
func layerFDNames(t *testing.T, env *harness.Env, img pushedImage) []string {
	t.Helper()
	blobs := map[string]bool{}
	for _, l := range img.Spec.Layers {
		blobs[l.Digest.String()] = true
	}
	var names []string
	for _, l := range statusLayers(t, env) {
		if blobs[l.Blob.String()] && !l.Unavailable {
			names = append(names, "layer-"+l.Snapshot)
		}
	}
	if len(names) != len(blobs) {
		t.Fatalf("rill's status lists %d streamed layers of the image (%v), want %d", len(names), names, len(blobs))
	}
	return names
}

// assertKept checks that the fake systemd keeps exactly one descriptor under each of names.
func assertKept(t *testing.T, systemd *harness.FakeSystemd, names []string, when string) {
	t.Helper()
	kept := systemd.Kept()
	for _, name := range names {
		if n := countOf(kept, name); n != 1 {
			t.Errorf("(e) %s: the fake systemd keeps %d descriptors named %s, want 1 (it keeps %v)", when, n, name, kept)
		}
	}
}

func countOf(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// assertNoHolder checks that no fd-holder serves the harness's holder socket, and that none
// was started since the holder's log had logSize bytes (a holder the daemon starts logs there).
func assertNoHolder(t *testing.T, env *harness.Env, logSize int64, when string) {
	t.Helper()
	if pid, err := env.Snapshotter.HolderPID(); !errors.Is(err, harness.ErrNoHolder) {
		t.Errorf("(e) %s: an fd-holder runs (pid %d, %v): the daemon did not use systemd's store", when, pid, err)
	}
	if size := fileSize(env.Snapshotter.HolderLogPath()); size != logSize {
		t.Errorf("(e) %s: the fd-holder's log %s grew from %d to %d bytes: the daemon started a holder", when, env.Snapshotter.HolderLogPath(), logSize, size)
	}
}

// fileSize is the size of the file at path, -1 when there is none.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return fi.Size()
}

// restartImage builds the restart image's layers in dir.
func restartImage(ctx context.Context, repoRoot, dir string) (*images.TestImage, error) {
	readerBin := filepath.Join(dir, "reader")
	if err := harness.BuildGo(ctx, repoRoot, "./test/cmd/reader", readerBin, true); err != nil {
		return nil, fmt.Errorf("building the reader: %w", err)
	}
	rng := rand.New(rand.NewChaCha8([32]byte{'r', 'i', 'l', 'l', 14}))
	hdr := func(typ byte, name string, mode, size int64) *tar.Header {
		return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: size, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
	}
	var (
		layers []*harness.Layer
		list   []string
	)
	for l := range 2 {
		w, err := harness.NewLayerWriter(filepath.Join(dir, fmt.Sprintf("data-%d.tar.gz", l)), gzip.BestSpeed)
		if err != nil {
			return nil, err
		}
		sub := fmt.Sprintf("data/l%d/", l)
		for _, d := range []string{"data/", sub} {
			if err := w.Add(hdr(tar.TypeDir, d, 0o755, 0), nil); err != nil {
				return nil, err
			}
		}
		for i := range restartFiles / 2 {
			content := make([]byte, 2<<10+rng.IntN(10<<10))
			for j := range content {
				content[j] = byte(rng.Uint32())
			}
			name := fmt.Sprintf("%sf%04d", sub, i)
			if err := w.Add(hdr(tar.TypeReg, name, 0o644, int64(len(content))), bytes.NewReader(content)); err != nil {
				return nil, err
			}
			sum := sha256.Sum256(content)
			list = append(list, hex.EncodeToString(sum[:])+"  /"+name)
		}
		layer, err := w.Close()
		if err != nil {
			return nil, err
		}
		layers = append(layers, layer)
	}
	rng.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })

	w, err := harness.NewLayerWriter(filepath.Join(dir, "reader.tar.gz"), gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(readerBin)
	if err != nil {
		return nil, err
	}
	sums := []byte(strings.Join(list, "\n") + "\n")
	for _, m := range []struct {
		name    string
		mode    int64
		content []byte
	}{{"reader", 0o755, bin}, {strings.TrimPrefix(restartList, "/"), 0o644, sums}} {
		if err := w.Add(hdr(tar.TypeReg, m.name, m.mode, int64(len(m.content))), bytes.NewReader(m.content)); err != nil {
			return nil, err
		}
	}
	top, err := w.Close()
	if err != nil {
		return nil, err
	}
	layers = append(layers, top)
	return &images.TestImage{
		Repository: "rill/restart:v1",
		Spec:       harness.ImageSpec{Layers: layers, Config: v1.Config{Cmd: readerCommand()}},
		Command:    readerCommand(),
	}, nil
}

// assertLayersServed checks that rill's status lists every layer of img as streamed and
// available (restored, not failed), waiting a bounded while for the daemon to restore them.
func assertLayersServed(t *testing.T, env *harness.Env, img pushedImage) {
	t.Helper()
	blobs := map[string]bool{}
	for _, l := range img.Spec.Layers {
		blobs[l.Digest.String()] = true
	}
	waitStatus(t, env, 30*time.Second, "every layer of the image streamed and available", func(ls []snapshotter.LayerStatus) bool {
		served := map[string]bool{}
		for _, l := range ls {
			if blobs[l.Blob.String()] && !l.Unavailable {
				served[l.Blob.String()] = true
			}
		}
		return len(served) == len(blobs)
	})
}

// assertRunsBinary checks that the running rill-snapshotter is the binary at path.
func assertRunsBinary(t *testing.T, env *harness.Env, path string) {
	t.Helper()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", env.Snapshotter.Process().PID()))
	if err != nil {
		t.Fatal(err)
	}
	if exe != path {
		t.Errorf("rill-snapshotter runs %s, want the new binary %s", exe, path)
	}
}

// readerRun is a running container of test/cmd/reader.
type readerRun struct {
	c       *harness.RunningContainer
	started time.Time
}

// ensureReader returns rd if its container still runs without error, else (after removing it)
// a new reader container, once it has read a few files.
func ensureReader(t *testing.T, env *harness.Env, img pushedImage, rd *readerRun) *readerRun {
	t.Helper()
	ctx := t.Context()
	if rd != nil {
		state, _, err := rd.c.State(ctx)
		if log := rd.log(t); err == nil && state == "CONTAINER_RUNNING" && log.errLine == "" {
			return rd
		}
		t.Logf("the reader container %s ended (%s): starting another one", rd.c.Name, firstNonEmpty(rd.log(t).errLine, state))
		if err := rd.c.Remove(ctx); err != nil {
			t.Errorf("removing reader container %s: %v", rd.c.Name, err)
		}
	}
	name := fmt.Sprintf("restart-reader-%d", time.Now().UnixNano()%1e6)
	c, err := env.CRI.StartInPod(ctx, name, img.Ref, readerCommand())
	if err != nil {
		t.Fatalf("starting the reader container: %v", err)
	}
	rd = &readerRun{c: c, started: time.Now()}
	log := rd.waitReads(t, time.Time{}, readCounts{"new": 6, "held": 1, "again": 1}, 2*time.Minute)
	t.Logf("reader container %s reads (%d reads so far)", name, len(log.reads))
	return rd
}

// readEntry is a "read ..." line of the reader.
type readEntry struct {
	seq   int
	kind  string // held, again, new
	start time.Time
	dur   time.Duration
	bytes int
	path  string
}

// readerLog is what the reader has written so far.
type readerLog struct {
	reads     []readEntry
	errLine   string // its "error ..." line, if any
	exhausted bool   // it has read every file once: no more first reads
	lines     []string
}

func (l readerLog) tail() string { return strings.Join(l.lines[max(0, len(l.lines)-8):], "\n") }

func (r *readerRun) log(t *testing.T) readerLog {
	t.Helper()
	lines, err := r.c.Log()
	if err != nil {
		t.Fatal(err)
	}
	var l readerLog
	for _, line := range lines {
		text := line.Text
		l.lines = append(l.lines, line.Stream+": "+text)
		switch {
		case strings.HasPrefix(text, "error ") && l.errLine == "":
			l.errLine = text
		case strings.HasPrefix(text, "exhausted"):
			l.exhausted = true
		case strings.HasPrefix(text, "read ") && line.Stream == "stdout":
			e, err := parseRead(text)
			if err != nil {
				t.Fatalf("the reader's line %q: %v", text, err)
			}
			l.reads = append(l.reads, e)
		}
	}
	return l
}

func parseRead(line string) (readEntry, error) {
	var e readEntry
	for _, f := range strings.Fields(line)[1:] {
		k, v, _ := strings.Cut(f, "=")
		var err error
		switch k {
		case "seq":
			e.seq, err = strconv.Atoi(v)
		case "kind":
			e.kind = v
		case "start":
			var ns int64
			ns, err = strconv.ParseInt(v, 10, 64)
			e.start = time.Unix(0, ns)
		case "dur":
			var ns int64
			ns, err = strconv.ParseInt(v, 10, 64)
			e.dur = time.Duration(ns)
		case "bytes":
			e.bytes, err = strconv.Atoi(v)
		case "path":
			e.path = v
		}
		if err != nil {
			return e, fmt.Errorf("%s: %w", k, err)
		}
	}
	return e, nil
}

// readCounts are numbers of reads by kind.
type readCounts map[string]int

func (want readCounts) metBy(reads []readEntry, after time.Time) bool {
	got := readCounts{}
	for _, e := range reads {
		if !e.start.Before(after) {
			got[e.kind]++
		}
	}
	for k, n := range want {
		if got[k] < n {
			return false
		}
	}
	return true
}

// waitReads waits (up to bound) until the reader has logged at least want reads of each kind
// that started after after, all correct; it fails the test at the reader's first error, when
// the container ends, or when the reads do not come within bound (a hang).
func (r *readerRun) waitReads(t *testing.T, after time.Time, want readCounts, bound time.Duration) readerLog {
	t.Helper()
	log, ended := r.waitOutcome(t, after, want, bound)
	if ended {
		t.Fatalf("the reader container %s saw an error or ended (it started %s ago): %s\nits last lines:\n%s",
			r.c.Name, time.Since(r.started).Round(time.Millisecond), log.errLine, log.tail())
	}
	return log
}

// waitOutcome waits (up to bound) until the reader has logged want reads started after
// after (ended false), or has logged an error or exited (ended true). Past bound it fails the
// test: a read hangs.
func (r *readerRun) waitOutcome(t *testing.T, after time.Time, want readCounts, bound time.Duration) (readerLog, bool) {
	t.Helper()
	ctx := t.Context()
	deadline := time.Now().Add(bound)
	lastState := time.Now()
	for {
		log := r.log(t)
		if log.errLine != "" {
			return log, true
		}
		if want.metBy(log.reads, after) {
			return log, false
		}
		if log.exhausted {
			t.Fatalf("the reader read every file before %v reads after %s: the test outran its image (raise restartFiles)", want, after.Format(time.RFC3339Nano))
		}
		if time.Since(lastState) > time.Second {
			lastState = time.Now()
			if state, code, err := r.c.State(ctx); err == nil && state == "CONTAINER_EXITED" {
				log = r.log(t) // what it wrote before it exited
				if log.errLine == "" {
					log.errLine = fmt.Sprintf("the reader exited with status %d without an error line", code)
				}
				return log, true
			}
		}
		if time.Now().After(deadline) {
			last := "none"
			if n := len(log.reads); n > 0 {
				e := log.reads[n-1]
				last = fmt.Sprintf("%s %s started %s ago", e.kind, e.path, time.Since(e.start).Round(time.Millisecond))
			}
			t.Fatalf("the reader did not make %v reads after %s within %s: a read hangs (its last read: %s)\nits last lines:\n%s",
				want, after.Format(time.RFC3339Nano), bound, last, log.tail())
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stall returns the longest read in flight at any time between from and to, and how many
// reads were.
func stall(reads []readEntry, from, to time.Time) (longest readEntry, n int) {
	for _, e := range reads {
		if e.start.After(to) || e.start.Add(e.dur).Before(from) {
			continue
		}
		n++
		if e.dur > longest.dur {
			longest = e
		}
	}
	return longest, n
}

func msString(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
