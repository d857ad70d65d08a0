package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rillstream/rill/convert/operation"
)

// The fleet mode measures what a node gains from another node's start: a first node streams
// the image (an artifact without a profile) while rill-snapshotter records what it opens, and
// reports the profile to rill watch; the watcher gives the tag's artifact that profile. The
// runs of the mode are then cold starts of a second node, as every other mode's.

// fleetRecordWindow is the first node's record window: longer than the start of any workload
// over the link, short enough that the report follows soon after.
const fleetRecordWindow = "45s"

// fleetWatcher is the rill watch the fleet mode runs for the whole benchmark.
type fleetWatcher struct {
	cmd    *exec.Cmd
	exited chan struct{}
	api    string
	listen string
	token  string
	log    string
}

// prepareFleet pushes and creates bench/W-fleet:rill, runs the first node, and returns the
// reference the measured runs pull, once the watcher has applied the first node's profile.
func (bn *bench) prepareFleet(ctx context.Context, w *workload) (string, error) {
	reg, via := bn.registry.Host(), bn.link.Addr()
	repo := "bench/" + w.name + "-fleet:rill"
	if err := bn.pushWorkload(ctx, w, repo); err != nil {
		return "", err
	}
	if err := bn.rillCreate(ctx, reg+"/"+repo, "", false); err != nil {
		return "", err
	}
	if err := bn.startWatcher(ctx); err != nil {
		return "", err
	}
	ref := via + "/" + repo
	config := fmt.Sprintf("[profile_reports]\nurl = %q\ntoken_file = %q\nnode_name = \"first-node\"\n", "http://"+bn.watch.listen, bn.watch.token)
	bn.logf("%s: the first node streams it without a profile and reports what it records", w.name)
	var learnt time.Duration
	r, err := bn.coldRunWith(ctx, w, modeRill, ref, runOptions{config: config, recordWindow: fleetRecordWindow, afterReady: func(ctx context.Context) error {
		began := time.Now()
		op, err := bn.waitFleetOperation(ctx, ref)
		if err != nil {
			return err
		}
		learnt = time.Since(began)
		bn.logf("  rill watch: %s", op.Message)
		return nil
	}})
	if err != nil {
		return "", fmt.Errorf("the first node of %s: %w", w.name, err)
	}
	w.fleetSource = fmt.Sprintf("learnt by rill watch from a first node's cold start (ready after %s; profile applied %s later)", sec(r.ready), sec(learnt))
	bn.logf("%s: %s", w.name, w.fleetSource)
	return ref, nil
}

// pushWorkload pushes w's image at repo on the registry itself.
func (bn *bench) pushWorkload(ctx context.Context, w *workload, repo string) error {
	return bn.push(ctx, w, repo)
}

// startWatcher starts rill watch on the registry as the nodes name it (through the link),
// taking profiles with a token; one report is enough. It runs until the benchmark ends.
func (bn *bench) startWatcher(ctx context.Context) error {
	if bn.watch != nil {
		return nil
	}
	dir := filepath.Join(bn.work, "watch")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	listen, err := freePort()
	if err != nil {
		return err
	}
	fw := &fleetWatcher{api: "unix://" + filepath.Join(dir, "watch.sock"), listen: listen, token: filepath.Join(dir, "token"), log: filepath.Join(dir, "watch.log"), exited: make(chan struct{})}
	if err := os.WriteFile(fw.token, []byte("bench-fleet-token\n"), 0o600); err != nil {
		return err
	}
	empty := filepath.Join(bn.work, "no-hosts")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(fw.log)
	if err != nil {
		return err
	}
	defer logf.Close()
	fw.cmd = exec.Command(bn.rillCLI, "watch", "--registry", bn.link.Addr(), "--listen", listen, "--api", fw.api,
		"--state-dir", filepath.Join(dir, "state"), "--reconcile-interval", "0", "--profile-token-file", fw.token,
		"--profile-min-reports", "1", "--plain-http", "--hosts-dir", empty, "--docker-config", filepath.Join(empty, "none.json"))
	fw.cmd.Stdout, fw.cmd.Stderr = logf, logf
	fw.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := fw.cmd.Start(); err != nil {
		return fmt.Errorf("starting rill watch: %w", err)
	}
	go func() { _ = fw.cmd.Wait(); close(fw.exited) }()
	bn.watch = fw
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := bn.operations(ctx); err == nil {
			bn.logf("rill watch (pid %d) takes profiles on %s", fw.cmd.Process.Pid, listen)
			return nil
		}
		select {
		case <-fw.exited:
			return fmt.Errorf("rill watch exited at start: %s", readTail(fw.log))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rill watch not answering after 30s: %s", readTail(fw.log))
		}
	}
}

// operations lists the watcher's operations.
func (bn *bench) operations(ctx context.Context) ([]operation.Operation, error) {
	out, err := exec.CommandContext(ctx, bn.rillCLI, "operation", "list", "--json", "--watcher", bn.watch.api).Output()
	if err != nil {
		return nil, err
	}
	var ops []operation.Operation
	return ops, json.Unmarshal(out, &ops)
}

// waitFleetOperation waits until the watcher's fleet-profile operation on ref has succeeded.
func (bn *bench) waitFleetOperation(ctx context.Context, ref string) (operation.Operation, error) {
	for {
		ops, err := bn.operations(ctx)
		if err != nil {
			return operation.Operation{}, fmt.Errorf("rill operation list: %w", err)
		}
		for _, op := range ops {
			if op.Image() != ref || op.Trigger != "fleet profile" || !op.State.Final() {
				continue
			}
			if op.State != operation.Succeeded {
				return op, fmt.Errorf("the watcher's fleet profile operation %s: %s %s", op.ID, op.State, op.Message)
			}
			return op, nil
		}
		select {
		case <-ctx.Done():
			return operation.Operation{}, fmt.Errorf("waiting for rill watch to apply the first node's profile: %w; its log: %s", ctx.Err(), readTail(bn.watch.log))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stopWatcher stops rill watch by its PID.
func (bn *bench) stopWatcher() error {
	if bn.watch == nil {
		return nil
	}
	_ = syscall.Kill(bn.watch.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-bn.watch.exited:
		return nil
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(bn.watch.cmd.Process.Pid, syscall.SIGKILL)
		<-bn.watch.exited
		return errors.New("rill watch did not stop within 30s of SIGTERM")
	}
}

func readTail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
