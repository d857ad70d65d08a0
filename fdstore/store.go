package fdstore

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/sirupsen/logrus"
)

// Store keeps named descriptors outside this process, so they outlive it.
//
// A Store is safe for concurrent use. What it keeps stays kept after Close and after this
// process exits; the next process gets it back from Open, and it stays kept until Remove.
type Store interface {
	// Kind names the mechanism: "systemd", "holder" or "none".
	Kind() string
	// Put keeps a duplicate of f under name, replacing what was kept under that name. f stays
	// open and the caller's. Names follow ValidName.
	Put(ctx context.Context, name string, f *os.File) error
	// Remove drops what is kept under name; no error if nothing is.
	Remove(ctx context.Context, name string) error
	// Close releases the client side only: kept descriptors stay kept.
	Close() error
}

// Mode chooses the mechanism.
type Mode string

const (
	// ModeAuto uses systemd's store when NOTIFY_SOCKET is set, else the holder.
	ModeAuto Mode = "auto"
	// ModeSystemd uses systemd's file-descriptor store; NOTIFY_SOCKET must be set.
	ModeSystemd Mode = "systemd"
	// ModeHolder uses a holder process, started if none listens on the socket.
	ModeHolder Mode = "holder"
	// ModeOff keeps nothing: Open returns a store whose Put and Remove do nothing.
	ModeOff Mode = "off"
)

// Defaults.
const (
	DefaultHolderSocket = "/run/rill/fdstore.sock"
	// DefaultMaxFDs caps the descriptors a holder keeps.
	DefaultMaxFDs = 65536
	// defaultTimeout bounds one exchange with the holder, and the holder's start, when the
	// context has no earlier deadline.
	defaultTimeout = 10 * time.Second
)

// Options configure Open. The zero value is ModeAuto with the defaults.
type Options struct {
	// Mode chooses the mechanism; empty means ModeAuto.
	Mode Mode
	// HolderSocket is the holder's unix socket (SOCK_SEQPACKET); default DefaultHolderSocket.
	// Its pidfile is HolderSocket+".pid" and the log of a holder Open starts HolderSocket+".log".
	HolderSocket string
	// HolderCommand starts a holder; "--socket" and HolderSocket are appended. Default
	// ["/proc/self/exe", "fd-holder"]: this very binary, which must call HolderMain for it.
	HolderCommand []string
	// Log receives what happens; default logrus's standard logger.
	Log *logrus.Entry
}

func (o Options) withDefaults() Options {
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	if o.HolderSocket == "" {
		o.HolderSocket = DefaultHolderSocket
	}
	if len(o.HolderCommand) == 0 {
		o.HolderCommand = []string{"/proc/self/exe", "fd-holder"}
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	o.Log = o.Log.WithField("component", "fdstore")
	return o
}

// Open chooses the store (see Mode) and returns, by name, the descriptors kept by the process
// before this one. They are this process's duplicates (close-on-exec), still kept by the
// store until Remove: keep using them, or Remove and close those no longer wanted.
//
// Under systemd the descriptors come from LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, which Open
// unsets so that children do not inherit them; every descriptor systemd passed is returned,
// socket-activation ones included, by its name. systemd cannot be asked whether it keeps
// descriptors: the unit must set FileDescriptorStoreMax= (and FileDescriptorStorePreserve=yes
// so that stop and start keep them, systemd ≥ 254), or what Put sends is dropped silently.
//
// With the holder, Open starts one (HolderCommand) when none listens on HolderSocket, in its own
// session, and waits until it accepts (until ctx's deadline, at most 10 s).
func Open(ctx context.Context, opts Options) (Store, map[string]*os.File, error) {
	opts = opts.withDefaults()
	mode := opts.Mode
	if mode == ModeAuto {
		mode = ModeHolder
		if os.Getenv("NOTIFY_SOCKET") != "" {
			mode = ModeSystemd
		}
	}
	switch mode {
	case ModeOff:
		opts.Log.Info("descriptors are not kept across restarts (fdstore mode off): streamed layers of running containers stop working when the daemon restarts")
		return noStore{}, map[string]*os.File{}, nil
	case ModeSystemd:
		return openSystemd(opts)
	case ModeHolder:
		return openHolder(ctx, opts)
	default:
		return nil, nil, fmt.Errorf("fdstore mode %q: want auto, systemd, holder or off", opts.Mode)
	}
}

// noStore is ModeOff's store.
type noStore struct{}

func (noStore) Kind() string                                         { return "none" }
func (noStore) Put(_ context.Context, name string, _ *os.File) error { return ValidName(name) }
func (noStore) Remove(context.Context, string) error                 { return nil }
func (noStore) Close() error                                         { return nil }

// deadline is ctx's deadline, or now plus the default timeout when that is earlier.
func deadline(ctx context.Context) time.Time {
	d := time.Now().Add(defaultTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}
