package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// pythonPackages are installed on a Debian minbase: ≥ 1 GiB of files, of which the start reads
// the few modules it imports (torch and sympy are the bulk nobody touches at start).
func pythonPackages() []string {
	return []string{"python3", "python3-numpy", "python3-scipy", "python3-pandas", "python3-sklearn",
		"python3-matplotlib", "python3-sympy", "python3-torch"}
}

// pythonStart is the service's start: import a handful of modules, then say ready.
const pythonStart = `import numpy, scipy.linalg, scipy.sparse, pandas, sklearn.linear_model
print("ready", flush=True)
`

const debianMirror = "http://deb.debian.org/debian"

// python is Debian bookworm with python3 and large scientific packages, built with debootstrap
// and apt-get from Debian's mirror; its profile is recorded by running the start once under
// strace in a chroot of the root file system.
func (b *builder) python(ctx context.Context) (*workload, error) {
	command := []string{"/usr/bin/python3", "/app/start.py"}
	layers, m, err := b.cachedWorkload(ctx, "python", "python-bookworm-v1", 1, func(ctx context.Context, dir string) ([]*harness.Layer, *meta, error) {
		rootfs := filepath.Join(dir, "rootfs")
		defer os.RemoveAll(rootfs)
		if err := b.installPython(ctx, dir, rootfs); err != nil {
			return nil, nil, err
		}
		if err := os.MkdirAll(filepath.Join(rootfs, "app"), 0o755); err != nil {
			return nil, nil, err
		}
		if err := os.WriteFile(filepath.Join(rootfs, "app", "start.py"), []byte(pythonStart), 0o644); err != nil {
			return nil, nil, err
		}
		b.logf("workload python: recording the files its start opens (strace in a chroot)")
		profile, startBytes, err := straceProfile(ctx, rootfs, filepath.Join(dir, "strace.txt"), command)
		if err != nil {
			return nil, nil, err
		}
		b.logf("workload python: writing the layer")
		l, err := images.RootfsLayer(rootfs, layerPath(dir, 0))
		if err != nil {
			return nil, nil, err
		}
		return []*harness.Layer{l}, &meta{StartBytes: startBytes, Profile: profile,
			ProfileSource: "recorded by strace -f -e trace=openat in a chroot of the image"}, nil
	})
	if err != nil {
		return nil, err
	}
	return b.finish("python", layers, m, command), nil
}

// installPython makes a Debian minbase in rootfs and installs pythonPackages in it.
func (b *builder) installPython(ctx context.Context, dir, rootfs string) error {
	log := filepath.Join(dir, "build.log")
	b.logf("workload python: debootstrap --variant=minbase bookworm (log %s)", log)
	if err := runLogged(ctx, log, nil, "debootstrap", "--variant=minbase", "bookworm", rootfs, debianMirror); err != nil {
		return err
	}
	if err := harness.UnmountAll(rootfs); err != nil {
		return err
	}
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("reading the host's resolv.conf for apt in the chroot: %w", err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "resolv.conf"), resolv, 0o644); err != nil {
		return err
	}
	proc := filepath.Join(rootfs, "proc")
	if err := syscall.Mount("proc", proc, "proc", 0, ""); err != nil {
		return fmt.Errorf("mounting proc in the chroot: %w", err)
	}
	defer func() { _ = harness.UnmountAll(rootfs) }()
	env := []string{"DEBIAN_FRONTEND=noninteractive", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	b.logf("workload python: apt-get install %s", strings.Join(pythonPackages(), " "))
	steps := [][]string{
		{"chroot", rootfs, "apt-get", "update"},
		append([]string{"chroot", rootfs, "apt-get", "install", "-y", "--no-install-recommends"}, pythonPackages()...),
		{"chroot", rootfs, "apt-get", "clean"},
	}
	for _, s := range steps {
		if err := runLogged(ctx, log, env, s[0], s[1:]...); err != nil {
			return err
		}
	}
	if err := harness.UnmountAll(rootfs); err != nil {
		return err
	}
	return errors.Join(
		os.RemoveAll(filepath.Join(rootfs, "var", "lib", "apt", "lists")),
		os.WriteFile(filepath.Join(rootfs, "etc", "resolv.conf"), nil, 0o644),
	)
}

// runLogged runs a tool, appending its output to log; the error carries the log's tail.
func runLogged(ctx context.Context, log string, env []string, name string, args ...string) error {
	bin, err := harness.LookTool(name)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if env != nil {
		cmd.Env = env
	}
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w (log: %s)", name, strings.Join(args, " "), err, log)
	}
	return nil
}

// straceProfile runs command in a chroot of rootfs under strace and returns the regular files
// it opened successfully, in first-open order and with symlinks resolved inside rootfs, and
// the sum of their sizes.
func straceProfile(ctx context.Context, rootfs, trace string, command []string) ([]string, int64, error) {
	args := append([]string{"-f", "-qq", "-e", "trace=chroot,open,openat,openat2,execve", "-o", trace, "chroot", rootfs}, command...)
	log := trace + ".log"
	if err := runLogged(ctx, log, []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "HOME=/root"}, "strace", args...); err != nil {
		return nil, 0, err
	}
	out, _ := os.ReadFile(log)
	if !strings.Contains(string(out), readyLine) {
		return nil, 0, fmt.Errorf("the workload did not print %q under strace: %s", readyLine, out)
	}
	f, err := os.Open(trace)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	var (
		paths   []string
		seen    = map[string]bool{}
		total   int64
		chroots bool
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "chroot(") {
			chroots = true
			continue
		}
		if !chroots || strings.Contains(line, "= -1 ") {
			continue // the host's files before the chroot, or a failed open
		}
		p, ok := quotedPath(line)
		if !ok || !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "/proc/") || strings.HasPrefix(p, "/dev/") {
			continue
		}
		real, err := resolveIn(rootfs, p)
		if err != nil || seen[real] {
			continue
		}
		st, err := os.Lstat(filepath.Join(rootfs, real))
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		seen[real] = true
		paths = append(paths, real)
		total += st.Size()
	}
	if err := sc.Err(); err != nil {
		return nil, 0, fmt.Errorf("reading %s: %w", trace, err)
	}
	if len(paths) == 0 {
		return nil, 0, fmt.Errorf("strace recorded no file opened in the chroot (%s)", trace)
	}
	return paths, total, nil
}

// quotedPath returns the first quoted string of an strace line: the path of open/openat/execve.
func quotedPath(line string) (string, bool) {
	i := strings.IndexByte(line, '"')
	if i < 0 {
		return "", false
	}
	s, err := strconv.QuotedPrefix(line[i:])
	if err != nil {
		return "", false
	}
	p, err := strconv.Unquote(s)
	return p, err == nil
}

// resolveIn resolves the symlinks of the absolute path p as the chroot at root sees them.
func resolveIn(root, p string) (string, error) {
	parts := strings.Split(strings.Trim(filepath.Clean(p), "/"), "/")
	resolved := "/"
	for hops := 0; len(parts) > 0; {
		next := filepath.Join(resolved, parts[0])
		parts = parts[1:]
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			resolved = next // not a symlink (or missing: Lstat of the caller decides)
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("too many symlinks resolving %s", p)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(resolved, target)
		}
		parts = append(strings.Split(strings.Trim(filepath.Clean(target), "/"), "/"), parts...)
		resolved = "/"
	}
	return resolved, nil
}
