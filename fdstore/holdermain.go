package fdstore

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// closeInherited closes the descriptors this process inherited without close-on-exec (Go
// opens its own with it): a holder must keep only what it is given, never, say, a pipe of
// the daemon that started it.
func closeInherited() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			unix.Close(fd)
		}
	}
}

// HolderMain is the `fd-holder` subcommand: the binary that calls Open must run it when started
// as `BINARY fd-holder --socket PATH [--max-fds N]` (Options.HolderCommand). It logs to stderr,
// stops on SIGTERM or SIGINT (dropping what it keeps), ignores SIGHUP, and returns the exit
// status: 0 after a stop, 2 for bad flags, 3 when another holder serves the socket, 1 otherwise.
// These flags are a contract between binaries of different versions: only add to them.
func HolderMain(args []string, stderr io.Writer) int {
	fl := flag.NewFlagSet("fd-holder", flag.ContinueOnError)
	fl.SetOutput(stderr)
	socket := fl.String("socket", DefaultHolderSocket, "unix socket to serve (SOCK_SEQPACKET)")
	maxFDs := fl.Int("max-fds", DefaultMaxFDs, "most descriptors kept at once")
	fl.Usage = func() {
		fmt.Fprintf(stderr, "Usage: rill-snapshotter fd-holder [flags]\n\nKeeps descriptors (FUSE connections) for rill-snapshotter across its restarts.\nStarted by the daemon when it does not run under systemd.\n\n")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "fd-holder: unexpected argument %q\n", fl.Arg(0))
		return 2
	}
	closeInherited()
	logger := logrus.New()
	logger.SetOutput(stderr)
	logger.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000000000Z07:00"})

	signal.Ignore(syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := RunHolder(ctx, *socket, logrus.NewEntry(logger), WithMaxFDs(*maxFDs))
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrHolderRunning):
		logger.WithError(err).Error("fd-holder not started")
		return 3
	default:
		logger.WithError(err).Error("fd-holder failed")
		return 1
	}
}
