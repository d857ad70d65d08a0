// Package remote is rill's access to OCI registries, built for streaming: every cold read of
// a file in a streamed layer becomes a range request, so latency, retries and the odd
// behaviour of real registries decide a container's start-up time.
//
// A [Registry] (built by [New]) knows
//
//   - hosts, mirrors and TLS from containerd's own certs.d/hosts.toml layout (mirrors first,
//     in order, then the upstream; requests to a mirror carry ?ns=<upstream>);
//   - authentication from Docker's config.json (credential helpers and credsStore included),
//     read at use, through a [Credentials] source the caller can extend; the registry token
//     flow is containerd's docker authorizer, and a 401 re-authenticates and retries once;
//   - manifests and configs by digest, size-limited and digest-verified ([Registry.Resolve],
//     [Registry.FetchManifest], [Registry.FetchBlob], [SelectPlatform]);
//   - referrers, through the referrers API or the OCI tag-schema fallback, and the write side
//     ([Registry.Referrers], [Registry.PushBlob], [Registry.PushManifest]);
//   - a repository's tags and manifest deletes ([Registry.Tags], [Registry.DeleteManifest]),
//     asked of the upstream, the last host configured;
//   - range reads of blobs ([BlobReader]): the redirect target is discovered with the first
//     ranged GET and refreshed when it expires, neighbouring ranges are coalesced and sent as
//     one multi-range request where the host allows it, every response is checked so that no
//     byte from a wrong offset or a truncated body is ever returned, transient failures are
//     retried with capped, jittered exponential backoff, and identical in-flight ranges are
//     shared (a caller joins only a fetch at least as urgent as itself).
//
// Every request to a network host goes through that host's scheduler, at the [Priority] its
// context carries ([WithPriority]; on-demand by default): on-demand requests (reads something
// is blocked on, manifests, TOCs) first, then prefetch, then background. The rule:
//
//   - on-demand requests have slots of their own ([WithMaxConcurrency], default 8) that
//     prefetch and background work never holds, so an on-demand request never waits for a
//     slot held by lower priorities, only for other on-demand requests;
//   - prefetch and background requests share a few further slots ([WithBulkConcurrency],
//     default 4): few bulk transfers in flight, because an on-demand request shares the
//     link's bandwidth with each of them;
//   - a freed slot goes to the highest priority waiting for it, the oldest request first
//     within a priority; a request whose context ends while it waits leaves the queue;
//   - a request holds its slot until its response body is closed.
//
// Counters and latencies are Prometheus collectors on a [Metrics] value the caller registers;
// the package registers nothing globally. Credentials never appear in logs or errors, and
// URL query strings (which carry signatures of redirect targets) are dropped from both.
//
// remote knows nothing of FUSE, snapshots or containerd's content store.
package remote
