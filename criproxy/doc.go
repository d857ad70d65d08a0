// Package criproxy is a CRI image service that forwards every call, as it came, to
// containerd's CRI, and hands the credentials of each PullImage to a [Sink] before the pull
// goes on: kubelet (--image-service-endpoint) sends a pod's imagePullSecrets only with
// PullImage, and containerd does not pass them to snapshotters, so this is where rill learns
// the credentials of the images it streams.
//
// Calls are forwarded as bytes (the messages are decoded only to read PullImage's image,
// auth and pod), so fields and methods of newer CRI versions pass through unchanged; errors
// come back with containerd's status codes. Credentials are never logged.
package criproxy
