// Package harness runs rill end to end against real components on one machine: the distribution
// registry, rill-snapshotter and a private containerd (with its CRI plugin and the runc shim),
// driven through crictl and ctr. Everything listens on loopback or on unix sockets in a temporary
// directory, and every process is started and stopped by its PID.
//
// The harness does not install anything: script/setup-test-env.sh does (containerd, ctr,
// containerd-shim-runc-v2, crictl, registry, runc, debootstrap). Start fails with a message
// naming that script when a tool is missing.
//
// One harness runs at a time on a machine (Start waits for a lock in /run/lock): containerd's
// shims keep their sockets in /run/containerd/s and runc its state in /run/containerd/runc,
// whichever containerd started them.
//
// A typical use:
//
//	env, err := harness.Start(ctx, harness.Options{Logf: t.Logf})
//	...
//	defer env.Close(ctx, failed)
//	img, err := harness.Push(ctx, env.Registry.Host()+"/demo:v1", spec)
//	_, err = env.CRI.Pull(ctx, img.Ref)
//	res, err := env.CRI.RunInPod(ctx, "demo", img.Ref, []string{"/app"}, time.Minute)
//
// Env.Close stops everything even after a failure: CRI pods and containers, ctr tasks, the
// containerd shims and runc containers of this instance, containerd, rill-snapshotter and the
// registry; it then unmounts whatever is still mounted below the temporary directory and, when
// the run failed, prints the tails of the daemons' logs and keeps the logs.
//
// rill-snapshotter keeps its FUSE connections across restarts in an fd-holder it starts itself
// (fdstore mode auto, no NOTIFY_SOCKET here), on a socket in the harness's directory
// (Snapshotter.HolderSocket). The holder runs in a session of its own and outlives the daemon;
// Close stops it by the PID of its pid file, after the daemon and the unmounts. Tests restart
// the daemon under running containers with Env.RestartSnapshotter (RestartTerm, RestartKill),
// upgrade it with Env.BuildSnapshotter and Snapshotter.SetBinary, find or kill the holder with
// Snapshotter.HolderPID and KillHolder, and follow a long-running container with
// CRI.StartInPod.
//
// No systemd runs here, so a test that needs one gets a fake: Env.StartFakeSystemd starts a
// FakeSystemd in the test process (a NOTIFY_SOCKET listener that keeps the descriptors sent with
// FDSTORE=1 and passes them to the next start as LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, as
// systemd does for a Type=notify unit with FileDescriptorStoreMax= and
// FileDescriptorStorePreserve=yes), and every later Start of rill-snapshotter goes through it;
// with `[fdstore] mode = "systemd"` (Snapshotter.SetFDStore) the daemon keeps its connections
// there, and no fd-holder runs.
//
// The images pushed by the tests are built here too, without network: BuildGo compiles static
// binaries of this repository, LayerWriter writes gzip tar layers, and Push sends an image
// assembled from them to the registry with go-containerregistry.
package harness
