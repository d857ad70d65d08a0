package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// RunningContainer is a container started in its own pod sandbox by CRI.StartInPod, which
// runs until it exits or Remove removes it with its pod.
type RunningContainer struct {
	Name    string
	PodID   string
	ID      string
	LogPath string // the CRI log file (kubelet's format), read directly by Log

	cri     *CRI
	started time.Time // when crictl start was run
}

// StartInPod starts command in a container of image inside a new host-network pod sandbox and
// returns without waiting for it to exit: follow it with Log and State, end it with Remove.
func (c *CRI) StartInPod(ctx context.Context, name, image string, command []string) (_ *RunningContainer, err error) {
	runDir, err := os.MkdirTemp(filepath.Join(c.dir, "pods"), name+"-")
	if err != nil {
		return nil, fmt.Errorf("creating the directory of pod %s: %w", name, err)
	}
	podConfig, err := writePodConfig(runDir, name)
	if err != nil {
		return nil, err
	}
	podID, err := c.Run(ctx, "runp", podConfig)
	if err != nil {
		return nil, fmt.Errorf("creating pod sandbox %s: %w", name, err)
	}
	r := &RunningContainer{Name: name, PodID: strings.TrimSpace(podID), LogPath: filepath.Join(runDir, name+".log"), cri: c}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.removePod(context.WithoutCancel(ctx), r.PodID))
		}
	}()
	ctrConfig, err := writeContainerConfig(runDir, name, image, command)
	if err != nil {
		return nil, err
	}
	id, err := c.Run(ctx, "create", r.PodID, ctrConfig, podConfig)
	if err != nil {
		return nil, fmt.Errorf("creating container %s in pod %s: %w", name, r.PodID, err)
	}
	r.ID = strings.TrimSpace(id)
	r.started = time.Now()
	if _, err := c.Run(ctx, "start", r.ID); err != nil {
		return nil, fmt.Errorf("starting container %s: %w", r.ID, err)
	}
	return r, nil
}

// LogLine is one line a container wrote.
type LogLine struct {
	Time   time.Time // when the runtime read it
	Stream string    // "stdout" or "stderr"
	Text   string
}

// Log reads the lines the container has written so far, from its CRI log file (so it works
// whatever state containerd's snapshotter is in). Lines split by the runtime ("P" partial
// records) are joined again.
func (r *RunningContainer) Log() ([]LogLine, error) {
	data, err := os.ReadFile(r.LogPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the log of container %s: %w", r.Name, err)
	}
	var lines []LogLine
	partial := map[string]*strings.Builder{}
	for _, raw := range strings.Split(string(data), "\n") {
		// "2016-10-06T00:17:09.669794202Z stdout F text"
		ts, rest, ok1 := strings.Cut(raw, " ")
		stream, rest, ok2 := strings.Cut(rest, " ")
		tag, text, ok3 := strings.Cut(rest, " ")
		if !ok1 || !ok2 || !ok3 {
			continue // the last, unfinished line of the file, or an empty one
		}
		b := partial[stream]
		if b == nil {
			b = &strings.Builder{}
			partial[stream] = b
		}
		b.WriteString(text)
		if tag == "P" {
			continue
		}
		t, _ := time.Parse(time.RFC3339Nano, ts)
		lines = append(lines, LogLine{Time: t, Stream: stream, Text: b.String()})
		b.Reset()
	}
	return lines, nil
}

// State returns the container's CRI state (CONTAINER_RUNNING, CONTAINER_EXITED...) and, once
// it exited, its exit code.
func (r *RunningContainer) State(ctx context.Context) (state string, exitCode int, err error) {
	out, err := r.cri.Run(ctx, "inspect", "--output", "json", r.ID)
	if err != nil {
		return "", 0, err
	}
	var status struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &status); err != nil {
		return "", 0, fmt.Errorf("decoding `crictl inspect %s`: %w", r.ID, err)
	}
	return status.Status.State, status.Status.ExitCode, nil
}

// Remove stops and removes the container with its pod sandbox (bounded: a minute).
func (r *RunningContainer) Remove(ctx context.Context) error {
	return r.cri.removePod(context.WithoutCancel(ctx), r.PodID)
}
