// Package fdstore keeps named file descriptors outside the daemon's process and hands them
// back to the next one, so that what lives as long as a descriptor (a FUSE connection, hence
// the mounts of running containers) survives a restart of rill-snapshotter. It keeps any
// descriptor and knows nothing of FUSE or containerd.
//
// Open picks one of two mechanisms behind the Store interface:
//
//   - systemd's file-descriptor store, when NOTIFY_SOCKET is set: Put sends
//     "FDSTOREREMOVE=1\nFDNAME=<name>" then "FDSTORE=1\nFDNAME=<name>" with the descriptor
//     (SCM_RIGHTS); the next start gets the descriptors as LISTEN_FDS/LISTEN_FDNAMES. The
//     unit must set FileDescriptorStoreMax= (and FileDescriptorStorePreserve=yes, systemd
//     ≥ 254, to keep them across stop and start); see script/rill-snapshotter.service.
//   - an fd-holder process otherwise: `rill-snapshotter fd-holder --socket PATH` (HolderMain),
//     started by Open in its own session when nobody listens on PATH.
//
// # The holder's protocol
//
// A holder started by an old binary serves new daemons, so this protocol only grows.
//
// The socket is a unix SOCK_SEQPACKET socket, mode 0600; the holder serves clients of uid 0
// or its own uid. Beside it: PATH.pid (the holder's pid, locked with flock(2) while it runs:
// the lock, not the socket file, says that a holder runs) and PATH.log (its stderr when Open
// started it). Every message is text of at most 4096 bytes, newline-separated KEY=VALUE lines as
// sd_notify's, with at most one descriptor (SCM_RIGHTS). Requests, each answered in order:
//
//	FDSTORE=1\nFDNAME=<name>  + one descriptor   keep it under name, replacing (and closing)
//	                                             a kept one of that name → OK=1 or ERROR=<text>
//	FDSTOREREMOVE=1\nFDNAME=<name>               close what is kept under name, if any → OK=1
//	LIST=1                                       → FDNAME=<name> + its descriptor, once per kept
//	                                               descriptor, then END=1
//
// Names follow systemd's FDNAME rule (ValidName): 1 to 255 bytes of printable ASCII without
// ':'. Any other request is answered ERROR=<text>, and the holder goes on. The holder keeps at
// most --max-fds descriptors (default 65,536); before LIST, and when full, it drops those that
// poll POLLERR or POLLHUP (the peer of a pipe or socket is gone, a FUSE connection was aborted),
// as systemd does. A client has 10 s to send each request and to take each reply; at most 32
// are served at once. SIGTERM or SIGINT stops the holder and closes everything it keeps.
package fdstore
