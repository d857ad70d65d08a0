// Package watch is rill's watcher: it creates streaming artifacts for new pushes to the
// repositories whose policy (package policy) enables it.
//
// Two paths lead to work, and either alone would do: the registry's webhook notifications
// (distribution's application/vnd.docker.distribution.events.v1+json envelopes, POSTed to
// the webhook handler), for speed; and a periodic reconciliation that lists the tags of every
// enabled repository and queues what has no artifact, so that a lost event, a watcher that
// was down, or a repository enabled after its pushes misses nothing.
//
// Each piece of work is an operation of package operation (one per tag and manifest digest,
// persisted, retried, cancellable). Running one re-reads the policy (a repository disabled
// meanwhile is left alone: disabling keeps what exists and converts nothing new), checks that
// the tag still names the manifest (a newer push wins: the operation then ends, and the
// newer manifest gets its own), and calls convert's Create with binding, which binds only if
// the tag still names what it converted.
//
// # No loops
//
// Binding a tag is itself a push to the tag, and artifacts and the tag-schema fallback's
// referrers indexes are pushes too. None of them may trigger a conversion: events of
// fallback tags ("sha256-<hex>"), of the policy repository, without a tag (artifacts are
// pushed by digest) or of non-manifest media types are dropped as they arrive (Pushes), and
// what remains is classified from its manifest (convert.ClassifyManifest) before it is
// queued: rill's binding indexes, streaming artifacts and other tools' artifacts are not
// images to convert.
//
// # The local API
//
// The watcher answers the CLI (rill operation list|show|cancel) over HTTP with JSON on a
// separate listener from the webhook, by default a unix socket only root may open (the
// webhook must be reachable by the registry; cancelling operations must not be): GET
// /v1/operations, GET /v1/operations/{id}, POST /v1/operations/{id}/cancel, POST
// /v1/reconcile. Client speaks it, over "unix:///path" or "http://host:port".
package watch
