package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SetupScript is the script that installs every tool the harness runs.
const SetupScript = "script/setup-test-env.sh"

// toolDirs are searched after $PATH: the setup script installs into /usr/local/bin, and runc and
// debootstrap live in /usr/sbin, which a non-login PATH may lack.
func toolDirs() []string {
	return []string{"/usr/local/bin", "/usr/local/sbin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
}

// requiredTools are the programs Start needs.
func requiredTools() []string {
	return []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc", "crictl", "registry", "go"}
}

// LookTool returns the absolute path of the program name, searching $PATH and then the
// directories the setup script installs into.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	for _, dir := range toolDirs() {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not installed (not in $PATH nor in %s): run `sudo bash %s` first",
		name, strings.Join(toolDirs(), ", "), SetupScript)
}

// CheckTools fails, naming the setup script, when any of the programs is missing.
func CheckTools(names ...string) error {
	var missing []string
	for _, name := range names {
		if _, err := LookTool(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s: run `sudo bash %s` from the repository root (it installs them)",
			strings.Join(missing, ", "), SetupScript)
	}
	return nil
}

// toolPath returns the PATH the harness gives to the processes it starts: the directories of
// the tools first, so that containerd finds containerd-shim-runc-v2 and runc.
func toolPath() string {
	dirs := []string{}
	seen := map[string]bool{}
	for _, name := range []string{"containerd-shim-runc-v2", "runc", "containerd"} {
		if p, err := LookTool(name); err == nil && !seen[filepath.Dir(p)] {
			seen[filepath.Dir(p)] = true
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	for _, d := range append(filepath.SplitList(os.Getenv("PATH")), toolDirs()...) {
		if d != "" && !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return strings.Join(dirs, string(os.PathListSeparator))
}

// RepoRoot returns the root of the rill module (the directory of its go.mod), found from the
// current directory.
func RepoRoot(ctx context.Context) (string, error) {
	goBin, err := LookTool("go")
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root with `go env GOMOD`: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the rill module: run from the repository (or a directory below it)")
	}
	return filepath.Dir(gomod), nil
}

// BuildGo compiles the package pkg (relative to the module root, e.g. "./test/cmd/checker") into
// out. With static it builds with CGO_ENABLED=0, for images that hold nothing but the binary.
func BuildGo(ctx context.Context, repoRoot, pkg, out string, static bool) error {
	return buildGo(ctx, repoRoot, pkg, out, static)
}

// buildGo is BuildGo with more flags for go build (such as -ldflags).
func buildGo(ctx context.Context, repoRoot, pkg, out string, static bool, flags ...string) error {
	goBin, err := LookTool("go")
	if err != nil {
		return err
	}
	args := append([]string{"build", "-buildvcs=false", "-trimpath", "-o", out}, flags...)
	cmd := exec.CommandContext(ctx, goBin, append(args, pkg)...)
	cmd.Dir = repoRoot
	cmd.Env = os.Environ()
	if static {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
