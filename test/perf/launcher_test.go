package perf

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// launcherEnv makes the test binary a launcher (see startLauncher) instead of running tests.
const launcherEnv = "RILL_PERF_LAUNCHER"

func init() {
	if os.Getenv(launcherEnv) == "1" {
		os.Exit(serveLaunches(os.Stdin, os.Stdout))
	}
}

// launcher is a child process that starts programs for this one. A Go process must not fork
// and exec a program from a FUSE mount it serves itself: while its vfork child waits for the
// mount to answer, the parent's forking thread cannot be stopped, so a garbage collection
// that starts then stops the world forever, FUSE servers included. The launcher serves no
// mount: its children's execs are answered by this process.
type launcher struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// startLauncher starts a launcher; the benchmark's cleanup stops it.
func startLauncher(b *testing.B) *launcher {
	b.Helper()
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), launcherEnv+"=1")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close()
		cmd.Wait()
	})
	return &launcher{cmd: cmd, in: in, out: bufio.NewReader(out)}
}

// run starts argv in the launcher, waits for it to exit and returns how long that took there.
func (l *launcher) run(argv ...string) (time.Duration, error) {
	if _, err := fmt.Fprintln(l.in, strings.Join(argv, "\t")); err != nil {
		return 0, err
	}
	line, err := l.out.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("launcher: %w", err)
	}
	line = strings.TrimSuffix(line, "\n")
	if msg, failed := strings.CutPrefix(line, "error "); failed {
		return 0, fmt.Errorf("start %s: %s", argv[0], msg)
	}
	ns, err := strconv.ParseInt(line, 10, 64)
	return time.Duration(ns), err
}

// serveLaunches runs one program per line of in (tab-separated argv) and answers each with
// its run time in nanoseconds, or "error <message>".
func serveLaunches(in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		argv := strings.Split(sc.Text(), "\t")
		start := time.Now()
		output, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		d := time.Since(start)
		if err != nil {
			fmt.Fprintf(out, "error %v: %q\n", err, output)
			continue
		}
		fmt.Fprintln(out, d.Nanoseconds())
	}
	return 0
}
