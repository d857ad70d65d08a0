package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// CRI drives containerd's CRI plugin with crictl, as the kubelet would.
type CRI struct {
	bin    string
	config string
	dir    string // pod and container configs, pod log directories
}

const crictlConfig = `runtime-endpoint: unix://%[1]s
image-endpoint: unix://%[1]s
timeout: 300
debug: false
pull-image-on-create: false
disable-pull-on-run: true
`

func newCRI(dir, containerdSocket string) (*CRI, error) {
	bin, err := LookTool("crictl")
	if err != nil {
		return nil, err
	}
	c := &CRI{bin: bin, config: filepath.Join(dir, "crictl.yaml"), dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "pods"), 0o755); err != nil {
		return nil, fmt.Errorf("creating the crictl directory: %w", err)
	}
	if err := os.WriteFile(c.config, fmt.Appendf(nil, crictlConfig, containerdSocket), 0o644); err != nil {
		return nil, fmt.Errorf("writing crictl's config: %w", err)
	}
	return c, nil
}

// Command returns the crictl command line the harness uses (for humans reproducing a step).
func (c *CRI) Command() string { return c.bin + " --config " + c.config }

// Run runs crictl with args and returns its stdout; the error includes its stderr.
func (c *CRI) Run(ctx context.Context, args ...string) (string, error) {
	stdout, stderr, err := c.run(ctx, args...)
	if err != nil {
		return stdout, fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr))
	}
	return stdout, nil
}

func (c *CRI) run(ctx context.Context, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--config", c.config}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// waitReady waits until the CRI plugin answers (containerd loads it after its socket is up).
func (c *CRI) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		if _, err = c.Run(ctx, "info"); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd's CRI plugin not ready after %s: %w", timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Pull pulls ref through CRI and returns the image ID crictl reports.
func (c *CRI) Pull(ctx context.Context, ref string) (string, error) {
	out, err := c.Run(ctx, "pull", ref)
	if err != nil {
		return "", err
	}
	// "Image is up to date for sha256:…"
	fields := strings.Fields(out)
	if len(fields) == 0 {
		return "", fmt.Errorf("crictl pull %s printed nothing", ref)
	}
	return fields[len(fields)-1], nil
}

// RemoveImage removes ref through CRI (containerd deletes it and collects its snapshots).
func (c *CRI) RemoveImage(ctx context.Context, ref string) error {
	_, err := c.Run(ctx, "rmi", ref)
	return err
}

// ContainerResult is what a container that ran to completion left.
type ContainerResult struct {
	ExitCode int
	Stdout   string
	Stderr   string
	Duration time.Duration // from crictl start to the container's exit being seen
}

// RunInPod runs command in a container of image inside a new host-network pod sandbox, waits
// up to timeout for it to exit, reads its logs, then removes the container and the pod.
func (c *CRI) RunInPod(ctx context.Context, name, image string, command []string, timeout time.Duration) (_ *ContainerResult, err error) {
	r, err := c.StartInPod(ctx, name, image, command)
	if err != nil {
		return nil, err
	}
	defer func() {
		if rmErr := c.removePod(context.WithoutCancel(ctx), r.PodID); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
	}()
	ctrID := r.ID
	exitCode, err := c.waitExited(ctx, ctrID, timeout)
	if err != nil {
		return nil, err
	}
	res := &ContainerResult{ExitCode: exitCode, Duration: time.Since(r.started)}
	if res.Stdout, res.Stderr, err = c.run(ctx, "logs", ctrID); err != nil {
		return nil, fmt.Errorf("crictl logs %s: %w: %s", ctrID, err, res.Stderr)
	}
	return res, nil
}

// removePod stops and removes a pod sandbox with its containers.
func (c *CRI) removePod(ctx context.Context, podID string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, stopErr := c.Run(ctx, "stopp", podID)
	if _, err := c.Run(ctx, "rmp", "--force", podID); err != nil {
		return fmt.Errorf("removing pod sandbox %s: %w (stopping it: %v)", podID, err, stopErr)
	}
	return nil
}

// waitExited polls the container's status until it has exited and returns its exit code.
func (c *CRI) waitExited(parent context.Context, id string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	for {
		out, err := c.Run(ctx, "inspect", "--output", "json", id)
		if err == nil {
			var status struct {
				Status struct {
					State    string `json:"state"`
					ExitCode int    `json:"exitCode"`
				} `json:"status"`
			}
			if err := json.Unmarshal([]byte(out), &status); err != nil {
				return 0, fmt.Errorf("decoding `crictl inspect %s`: %w", id, err)
			}
			if status.Status.State == "CONTAINER_EXITED" {
				return status.Status.ExitCode, nil
			}
		}
		select {
		case <-ctx.Done():
			if cause := context.Cause(parent); cause != nil {
				return 0, fmt.Errorf("waiting for container %s to exit: %w", id, cause)
			}
			return 0, fmt.Errorf("container %s did not exit within %s (last inspect error: %v)", id, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writePodConfig writes a pod sandbox config with host networking (no CNI needed) into dir,
// which is also the pod's log directory.
func writePodConfig(dir, name string) (string, error) {
	config := map[string]any{
		"metadata": map[string]any{
			"name": name, "namespace": "rill-test", "uid": filepath.Base(dir), "attempt": 0,
		},
		"log_directory": dir,
		"linux": map[string]any{
			"security_context": map[string]any{
				"namespace_options": map[string]any{"network": 2}, // NODE: the host's network
			},
		},
	}
	return writeJSON(filepath.Join(dir, "pod.json"), config)
}

func writeContainerConfig(dir, name, image string, command []string) (string, error) {
	config := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	}
	return writeJSON(filepath.Join(dir, "container.json"), config)
}

func writeJSON(path string, v any) (string, error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encoding %s: %w", path, err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}

// removeAll stops and removes every container and pod sandbox CRI knows.
func (c *CRI) removeAll(ctx context.Context) error {
	var errs []string
	if _, err := c.Run(ctx, "rm", "--all", "--force"); err != nil {
		errs = append(errs, err.Error())
	}
	if _, err := c.Run(ctx, "rmp", "--all", "--force"); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing CRI containers and pods: %s", strings.Join(errs, "; "))
	}
	return nil
}
