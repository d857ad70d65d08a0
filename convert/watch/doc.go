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
// The watcher answers the CLI (rill operation list|show|cancel, rill create --no-wait) over
// HTTP with JSON on a separate listener from the webhook, by default a unix socket only root
// may open (the webhook must be reachable by the registry; cancelling operations must not
// be): GET /v1/operations, POST /v1/operations (an operator's create, CreateRequest), GET
// /v1/operations/{id}, POST /v1/operations/{id}/cancel, POST /v1/reconcile. Client speaks it,
// over "unix:///path" or "http://host:port".
//
// An operator's create (SubmitCreate) is checked and its tag resolved when it is submitted,
// so that a typo or a missing image fails the command; it is then an operation like the
// others (persisted, retried, cancellable), except that it applies the operator's choices
// (operation.CreateSpec) and ignores the repository's policy. If its tag names another image
// when it runs (not a binding index), it fails with convert.ErrTagMoved: the operator decides
// what to convert.
//
// # Fleet profiles
//
// With Config.Profiles.Token set, ProfileHandler (served beside the webhook, at
// artifact.ProfileReportPath) takes the prefetch profiles nodes recorded for a streaming
// artifact (artifact.ProfileReport). Reports are checked (token, size, the profile rules, paths
// that are files of the artifact's TOCs, a byte budget) and kept per artifact and node under
// StateDir/profiles. Once there are enough (ProfileConfig), they are merged (MergeProfiles) and,
// if the tag still binds the artifact and the result differs enough from its profile
// (ProfileDistance), a manual operation (trigger "fleet profile", CreateSpec.IfBinds) gives the
// tag's artifact the merged profile: convert's Create pushes the artifact's manifest again with
// it, over the same layers, and binds the tag if it still names the same image. docs/formats.md
// specifies it.
//
// # Several instances
//
// Watchers of the same registry share the policy (it lives in the registry) and nothing else:
// each has its own operations, and they do not coordinate or lock. Correctness does not
// depend on it, because every step is idempotent or checked against the registry:
//
//   - each instance that receives a push converts it. Artifacts that exist when an instance
//     starts are kept, so the work is duplicated only when instances run at the same time;
//     the manifest may then get two equivalent artifacts (identical when built within the
//     same second: conversion is deterministic and the artifact is dated to the second), of
//     which at most one is bound and the other a referrer;
//   - the binding is pushed only if the tag still names what the instance read when it began
//     (convert's bind re-resolves the tag just before the push), and only binds artifacts of
//     the manifests the tag listed. An instance that finds the tag bound meanwhile ends its
//     operation (Succeeded, saying so) and queues nothing new: binding indexes are not images.
//     Two instances that pass the check at once push bindings of the same image;
//   - what is not guaranteed: a registry has no conditional tag update, so a push landing in
//     the instant between the check and the binding's PUT is overwritten by the binding of
//     the image before it (its operation then finds the tag bound and ends). This holds for a
//     single instance and for rill create too; a lock among watchers would not close it,
//     since the pusher takes no part in it.
package watch
