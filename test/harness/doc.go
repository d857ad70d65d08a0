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
// The images pushed by the tests are built here too, without network: BuildGo compiles static
// binaries of this repository, LayerWriter writes gzip tar layers, and Push sends an image
// assembled from them to the registry with go-containerregistry.
package harness
