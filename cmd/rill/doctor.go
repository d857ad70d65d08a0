package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/rillstream/rill/cmd/rill/internal/containerdconf"
	"github.com/rillstream/rill/config"
)

// finding is one result of rill doctor: what was checked, what was found, and the fix.
type finding struct {
	Check  string `json:"check"`
	Status string `json:"status"` // ok, warn, problem
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

const (
	statusOK      = "ok"
	statusWarn    = "warn"
	statusProblem = "problem"
)

// doctorOptions are doctor's flags; every host path is under rootPrefix.
type doctorOptions struct {
	rootPrefix         string
	rillConfig         string
	containerdConfig   string
	containerdAddress  string
	devFuse            string
	kernelRelease      string // empty: this kernel's
	image              string
	registry           registryFlags
	skipContainerdLive bool
}

// errProblems makes doctor exit non-zero when a check found a problem.
var errProblems = errors.New("problems found")

func runDoctor(ctx context.Context, env *cliEnv, args []string) error {
	var o doctorOptions
	fs := flag.NewFlagSet("rill doctor", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.StringVar(&o.rootPrefix, "root-prefix", "/", "the host's root: config files, /dev/fuse and state are looked up under it")
	fs.StringVar(&o.rillConfig, "config", config.DefaultPath, "rill-snapshotter's config")
	fs.StringVar(&o.containerdConfig, "containerd-config", "/etc/containerd/config.toml", "containerd's config")
	fs.StringVar(&o.containerdAddress, "address", "/run/containerd/containerd.sock", "containerd's socket (not under --root-prefix)")
	fs.BoolVar(&o.skipContainerdLive, "no-containerd", false, "skip the checks that ask the running containerd")
	fs.StringVar(&o.devFuse, "dev-fuse", "/dev/fuse", "the FUSE device")
	fs.StringVar(&o.kernelRelease, "kernel-release", "", "the kernel release to judge FUSE passthrough by (default: this kernel's)")
	asJSON := fs.Bool("json", false, "print the findings as JSON")
	o.registry.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill doctor [IMAGE] [flags]\n\nChecks this node's setup for streaming and prints each finding with its fix: containerd's\nconfig and the running containerd, rill-snapshotter's sockets, /dev/fuse, FUSE passthrough, the\nstate directory. With IMAGE, also whether the registry is reachable from here, credentials,\nand whether IMAGE would stream and why not. Exits 1 when it finds a problem.\n\n")
		fs.PrintDefaults()
	}
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		if o.image != "" {
			return fmt.Errorf("one IMAGE only: %w", errUsage)
		}
		o.image, args = fs.Arg(0), fs.Args()[1:]
	}
	findings := doctor(ctx, env, o)
	if *asJSON {
		if err := writeJSON(env.stdout, findings); err != nil {
			return err
		}
	} else {
		printFindings(env.stdout, findings)
	}
	for _, f := range findings {
		if f.Status == statusProblem {
			return errProblems
		}
	}
	return nil
}

func printFindings(w io.Writer, findings []finding) {
	problems, warnings := 0, 0
	for _, f := range findings {
		label := map[string]string{statusOK: "ok     ", statusWarn: "WARN   ", statusProblem: "PROBLEM"}[f.Status]
		fmt.Fprintf(w, "%s %s: %s\n", label, f.Check, f.Detail)
		if f.Fix != "" && f.Status != statusOK {
			fmt.Fprintf(w, "        fix: %s\n", f.Fix)
		}
		switch f.Status {
		case statusProblem:
			problems++
		case statusWarn:
			warnings++
		}
	}
	fmt.Fprintf(w, "%d problems, %d warnings\n", problems, warnings)
}

// doctor runs every check and returns the findings in order.
func doctor(ctx context.Context, env *cliEnv, o doctorOptions) []finding {
	host := func(p string) string { return filepath.Join(o.rootPrefix, p) }
	var out []finding
	add := func(f finding) { out = append(out, f) }

	cfg, err := config.Load(host(o.rillConfig), true)
	if err != nil {
		add(finding{"rill config", statusProblem, err.Error(), "fix the named key (every key is in script/config.toml)"})
		cfg = config.Default()
	} else {
		add(finding{"rill config", statusOK, host(o.rillConfig) + " is valid (or absent: defaults)", ""})
	}

	ctrdRoot := "/var/lib/containerd"
	if doc, ferr := checkContainerdConfig(host(o.containerdConfig), cfg.Address, add); ferr == nil {
		if r, ok := doc["root"].(string); ok && r != "" {
			ctrdRoot = r
		}
	}
	if !o.skipContainerdLive {
		add(checkContainerdLive(ctx, o.containerdAddress))
	}
	add(checkSocket("rill socket", host(cfg.Address), "containerd's proxy_plugins.rill.address"))
	if st := cfg.StatusSocket(); st != "" && st != "none" {
		add(checkSocket("rill status socket", host(st), "rill status and rill why"))
	}
	add(checkDevFuse(host(o.devFuse)))
	add(checkPassthrough(o.kernelRelease, cfg.Streaming.Passthrough))
	add(checkSameFilesystem(host(cfg.Root), host(ctrdRoot)))
	if !cfg.Streaming.Enabled {
		add(finding{"streaming", statusProblem, "streaming.enabled = false in " + host(o.rillConfig) + ": every layer is pulled in full", "set streaming.enabled = true and restart rill-snapshotter"})
	}
	if o.image != "" {
		out = append(out, checkImage(ctx, env, o, cfg)...)
	}
	return out
}

// checkContainerdConfig reports each of rill's entries in containerd's config.
func checkContainerdConfig(path, address string, add func(finding)) (map[string]any, error) {
	const check = "containerd config"
	b, err := os.ReadFile(path)
	if err != nil {
		add(finding{check, statusProblem, err.Error(), "run rill install-node (it merges rill's entries into containerd's config), then restart containerd"})
		return nil, err
	}
	doc, err := containerdconf.Parse(b)
	if err != nil {
		add(finding{check, statusProblem, path + ": " + err.Error(), "fix the TOML syntax"})
		return nil, err
	}
	version := containerdconf.Version(doc)
	if version < 2 {
		add(finding{check, statusProblem, path + " names no version = 2 or 3", "add version = 3 (containerd 2.x) or 2 (1.7) at the top, with the tables in that format; then rill install-node"})
		return doc, nil
	}
	add(finding{check, statusOK, fmt.Sprintf("%s, version %d", path, version), ""})
	merge := "run rill install-node (or add the line by hand, README: Enable it in containerd), then systemctl restart containerd"

	proxy, _ := containerdconf.Lookup(doc, "proxy_plugins", containerdconf.Snapshotter)
	pm, _ := proxy.(map[string]any)
	switch {
	case pm == nil || pm["type"] == nil && pm["address"] == nil:
		add(finding{"proxy plugin", statusProblem, "containerd has no [proxy_plugins.rill]: it does not know rill", merge})
	case pm["type"] != "snapshot":
		add(finding{"proxy plugin", statusProblem, fmt.Sprintf("proxy_plugins.rill.type = %v, want \"snapshot\"", pm["type"]), merge})
	case pm["address"] != address:
		add(finding{"proxy plugin", statusProblem, fmt.Sprintf("proxy_plugins.rill.address = %v, but rill-snapshotter listens on %s", pm["address"], address), "make the two the same: proxy_plugins.rill.address in containerd's config, address in rill's"})
	default:
		add(finding{"proxy plugin", statusOK, "proxy_plugins.rill at " + address, ""})
	}
	if version >= 3 {
		exp, _ := containerdconf.Lookup(doc, "proxy_plugins", containerdconf.Snapshotter, "exports", "enable_remote_snapshot_annotations")
		if exp != "true" {
			add(finding{"labels export", statusProblem, "proxy_plugins.rill.exports.enable_remote_snapshot_annotations is not \"true\": pulls through the transfer service (CRI's default in 2.x) do not tell rill which image a layer is from, and every layer is pulled in full", merge})
		} else {
			add(finding{"labels export", statusOK, "enable_remote_snapshot_annotations = \"true\"", ""})
		}
		snap, _ := containerdconf.Lookup(doc, "plugins", containerdconf.CRIImagesV3, "snapshotter")
		addSnapshotter(add, snap, "plugins.'io.containerd.cri.v1.images'.snapshotter", merge)
		var entry map[string]any
		for _, e := range containerdconf.UnpackEntries(doc) {
			if e["snapshotter"] == containerdconf.Snapshotter {
				entry = e
			}
		}
		if entry == nil {
			add(finding{"unpack_config", statusProblem, "no [[plugins.'io.containerd.transfer.v1.local'.unpack_config]] names snapshotter \"rill\": pulls into rill fail with \"no unpack platforms defined\"", merge})
		} else {
			add(finding{"unpack_config", statusOK, fmt.Sprintf("platform %v, differ %v", entry["platform"], entry["differ"]), ""})
		}
		if d, _ := containerdconf.Lookup(doc, "plugins", containerdconf.CRIImagesV3, "disable_snapshot_annotations"); d == false {
			add(finding{"snapshot annotations", statusWarn, "disable_snapshot_annotations = false switches CRI in 2.x to the older client-side pull (containerd logs a warning); rill still gets the labels", "remove the line unless you need the client-side pull"})
		}
		return doc, nil
	}
	snap, _ := containerdconf.Lookup(doc, "plugins", containerdconf.CRIV2, "containerd", "snapshotter")
	addSnapshotter(add, snap, "plugins.\"io.containerd.grpc.v1.cri\".containerd.snapshotter", merge)
	if d, _ := containerdconf.Lookup(doc, "plugins", containerdconf.CRIV2, "containerd", "disable_snapshot_annotations"); d != false {
		add(finding{"snapshot annotations", statusProblem, "disable_snapshot_annotations is not false (1.7 defaults to true): CRI does not pass the image's labels to rill, and every layer is pulled in full", merge})
	} else {
		add(finding{"snapshot annotations", statusOK, "disable_snapshot_annotations = false", ""})
	}
	return doc, nil
}

func addSnapshotter(add func(finding), snap any, key, fix string) {
	if snap != containerdconf.Snapshotter {
		cur := "not set (overlayfs)"
		if snap != nil {
			cur = fmt.Sprintf("%q", snap)
		}
		add(finding{"CRI snapshotter", statusProblem, key + " is " + cur + ": Kubernetes pulls do not go through rill", fix})
		return
	}
	add(finding{"CRI snapshotter", statusOK, "CRI unpacks into rill", ""})
}

// checkContainerdLive asks the running containerd whether it loaded rill's proxy plugin.
func checkContainerdLive(ctx context.Context, address string) finding {
	const check = "containerd"
	if _, err := os.Stat(address); err != nil {
		return finding{check, statusProblem, fmt.Sprintf("cannot reach containerd at %s: %v", address, err), "start containerd (systemctl status containerd), or name its socket with --address"}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := containerd.New(address, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return finding{check, statusProblem, fmt.Sprintf("cannot reach containerd at %s: %v", address, err), "start containerd (systemctl status containerd), or name its socket with --address"}
	}
	defer c.Close()
	resp, err := c.IntrospectionService().Plugins(ctx, "type==io.containerd.snapshotter.v1,id=="+containerdconf.Snapshotter)
	if err != nil {
		return finding{check, statusProblem, fmt.Sprintf("containerd at %s does not answer: %v", address, err), "check containerd's log (journalctl -u containerd)"}
	}
	if len(resp.Plugins) == 0 {
		return finding{check, statusProblem, "containerd at " + address + " has no snapshotter \"rill\": its running config has no proxy_plugins.rill", "merge rill's entries (rill install-node), then systemctl restart containerd"}
	}
	if ie := resp.Plugins[0].GetInitErr(); ie != nil {
		return finding{check, statusProblem, "containerd's rill plugin failed: " + ie.GetMessage(), "start rill-snapshotter (systemctl status rill-snapshotter), then restart containerd"}
	}
	return finding{check, statusOK, "containerd at " + address + " has the rill snapshotter loaded", ""}
}

// checkSocket checks that a socket of rill-snapshotter answers and is private.
func checkSocket(check, path, usedBy string) finding {
	fi, err := os.Stat(path)
	if err != nil {
		return finding{check, statusProblem, fmt.Sprintf("%s: %v: rill-snapshotter is not running, or listens elsewhere", path, err), "systemctl start rill-snapshotter; check its address keys against " + usedBy}
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return finding{check, statusProblem, path + " is not a socket (" + fi.Mode().String() + ")", "remove it and restart rill-snapshotter"}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && os.Geteuid() == 0 {
		return finding{check, statusWarn, fmt.Sprintf("%s belongs to uid %d, not root", path, st.Uid), "run rill-snapshotter as root (the unit does)"}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return finding{check, statusProblem, fmt.Sprintf("%s is %#o: others may call it (it controls mounts)", path, perm), "chmod 0600 " + path + "; rill-snapshotter creates it 0600: is something changing it?"}
	}
	if dir, err := os.Stat(filepath.Dir(path)); err == nil && dir.Mode().Perm()&0o022 != 0 {
		return finding{check, statusProblem, fmt.Sprintf("%s is %#o: others may replace the socket", filepath.Dir(path), dir.Mode().Perm()), "chmod 0700 " + filepath.Dir(path)}
	}
	return finding{check, statusOK, path + " (" + fi.Mode().Perm().String() + ")", ""}
}

func checkDevFuse(path string) finding {
	const check = "/dev/fuse"
	fi, err := os.Stat(path)
	if err != nil {
		return finding{check, statusProblem, fmt.Sprintf("%v: streamed layers cannot be mounted (every layer is pulled in full)", err), "modprobe fuse (and install fuse3); in a container, pass the host's /dev/fuse (privileged or --device /dev/fuse)"}
	}
	if fi.Mode()&fs.ModeCharDevice == 0 {
		return finding{check, statusProblem, path + " is not a character device", "remove it and modprobe fuse"}
	}
	return finding{check, statusOK, path + " is a character device", ""}
}

// checkPassthrough says whether the kernel can hand complete files to FUSE passthrough
// (Linux 6.9 and later with CONFIG_FUSE_PASSTHROUGH).
func checkPassthrough(release string, enabled bool) finding {
	const check = "FUSE passthrough"
	if !enabled {
		return finding{check, statusOK, "streaming.passthrough = false: complete files are read through rill", ""}
	}
	if release == "" {
		var u syscall.Utsname
		if err := syscall.Uname(&u); err == nil {
			release = utsString(u.Release[:])
		}
	}
	major, minor := kernelVersion(release)
	if major < 6 || major == 6 && minor < 9 {
		return finding{check, statusWarn, fmt.Sprintf("kernel %s is older than 6.9: complete files are read through rill, not by the kernel directly (slower warm reads)", release), "upgrade to a kernel ≥ 6.9 built with CONFIG_FUSE_PASSTHROUGH=y, or set streaming.passthrough = false to silence this"}
	}
	if b, err := os.ReadFile("/boot/config-" + release); err == nil && !strings.Contains(string(b), "CONFIG_FUSE_PASSTHROUGH=y") {
		return finding{check, statusWarn, "kernel " + release + " is built without CONFIG_FUSE_PASSTHROUGH", "use a kernel with CONFIG_FUSE_PASSTHROUGH=y"}
	}
	return finding{check, statusOK, "kernel " + release + " supports it", ""}
}

func utsString(b []int8) string {
	var s strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		s.WriteByte(byte(c))
	}
	return s.String()
}

func kernelVersion(release string) (int, int) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0
	}
	major, _ := strconv.Atoi(parts[0])
	end := 0
	for end < len(parts[1]) && parts[1][end] >= '0' && parts[1][end] <= '9' {
		end++
	}
	minor, _ := strconv.Atoi(parts[1][:end])
	return major, minor
}

// checkSameFilesystem compares the filesystems of rill's state and containerd's root: kubelet's
// image garbage collection watches the latter's disk.
func checkSameFilesystem(rillRoot, ctrdRoot string) finding {
	const check = "state filesystem"
	devOf := func(p string) (uint64, string, error) {
		for q := p; ; q = filepath.Dir(q) {
			var st syscall.Stat_t
			if err := syscall.Stat(q, &st); err == nil {
				return uint64(st.Dev), q, nil
			} else if !errors.Is(err, fs.ErrNotExist) || q == filepath.Dir(q) {
				return 0, q, err
			}
		}
	}
	a, at, err := devOf(rillRoot)
	if err != nil {
		return finding{check, statusWarn, err.Error(), ""}
	}
	b, bt, err := devOf(ctrdRoot)
	if err != nil {
		return finding{check, statusWarn, err.Error(), ""}
	}
	if a != b {
		return finding{check, statusProblem, fmt.Sprintf("rill's root %s (on the filesystem of %s) and containerd's root %s (of %s) are on different filesystems: kubelet's image garbage collection watches containerd's and never sees rill's disk fill", rillRoot, at, ctrdRoot, bt), "move rill's root (root in /etc/rill/config.toml) onto containerd's filesystem, e.g. /var/lib/rill beside /var/lib/containerd"}
	}
	return finding{check, statusOK, rillRoot + " and " + ctrdRoot + " share a filesystem", ""}
}
