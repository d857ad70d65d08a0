package harness

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Ctr runs containerd's ctr against the harness's containerd.
type Ctr struct {
	bin    string
	socket string
}

func newCtr(containerdSocket string) (*Ctr, error) {
	bin, err := LookTool("ctr")
	if err != nil {
		return nil, err
	}
	return &Ctr{bin: bin, socket: containerdSocket}, nil
}

// Command returns the ctr command line the harness uses (for humans reproducing a step).
func (c *Ctr) Command() string { return c.bin + " --address " + c.socket }

// Run runs `ctr --address SOCKET --namespace ns args...` and returns its stdout and stderr; the
// error includes stderr.
func (c *Ctr) Run(ctx context.Context, ns string, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--address", c.socket, "--namespace", ns}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), stderr.String(), fmt.Errorf("ctr -n %s %s: %w: %s",
			ns, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), stderr.String(), nil
}

// RunContainer runs command in a new container of image (already pulled into namespace ns)
// on rill's snapshots, removes it when it exits, and returns its stdout and stderr.
func (c *Ctr) RunContainer(ctx context.Context, ns, image, id string, command ...string) (string, string, error) {
	args := append([]string{"run", "--rm", "--snapshotter", SnapshotterName, image, id}, command...)
	return c.Run(ctx, ns, args...)
}

// lines runs a listing command and returns its non-empty output lines.
func (c *Ctr) lines(ctx context.Context, ns string, args ...string) ([]string, error) {
	out, _, err := c.Run(ctx, ns, args...)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// removeAll kills and deletes every task and container in every namespace.
func (c *Ctr) removeAll(ctx context.Context) error {
	nss, err := c.lines(ctx, "default", "namespaces", "list", "--quiet")
	if err != nil {
		return err
	}
	var errs []string
	for _, ns := range nss {
		tasks, err := c.lines(ctx, ns, "tasks", "list", "--quiet")
		if err != nil {
			errs = append(errs, err.Error())
		}
		for _, id := range tasks {
			_, _, _ = c.Run(ctx, ns, "tasks", "kill", "--all", "--signal", "SIGKILL", id)
			if _, _, err := c.Run(ctx, ns, "tasks", "delete", "--force", id); err != nil {
				errs = append(errs, err.Error())
			}
		}
		ctrs, err := c.lines(ctx, ns, "containers", "list", "--quiet")
		if err != nil {
			errs = append(errs, err.Error())
		}
		for _, id := range ctrs {
			if _, _, err := c.Run(ctx, ns, "containers", "delete", id); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing ctr tasks and containers: %s", strings.Join(errs, "; "))
	}
	return nil
}
