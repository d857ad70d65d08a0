// Package policy keeps rill's per-repository policy — whether new pushes to a repository get
// streaming artifacts automatically — in the registry itself.
//
// # Where the policy lives, and why
//
// Every instance of the watcher (rill watch) must see the same policy, and it must outlive
// any of them. The registry is the one store they all reach already, with its own
// authentication, replication and backups; a database or a config file on one node would be
// another service to run, secure and keep in step. So a repository's policy is a small OCI
// artifact manifest (artifactType ArtifactType, the empty config and one empty layer, the
// policy in its annotations) in a dedicated policy repository of the same registry
// (DefaultRepository, "rill/policy" unless configured), at a tag derived from the
// repository's name (Tag: "repo-" and the first 40 hex digits of its SHA-256; tags cannot
// hold slashes, and the annotations carry the name).
//
// One manifest per repository rather than one document for the whole registry, because
// registries offer no conditional PUT (no compare-and-swap on a tag): writers of a shared
// document would have to read, modify, write and re-read in a loop, and could still lose a
// change to a race. With a tag per repository, writers of different repositories never touch
// the same object; writers of the same repository race only on that repository's switch, and
// the last PUT wins — what an operator flipping a switch expects. Set reads the policy back
// after writing, so its caller sees what the registry holds, even if another writer won.
//
// Listing the policy repository's tags enumerates every policy, which is how the watcher's
// reconciliation finds the enabled repositories without the registry's catalog API (often
// disabled). Disabling writes enabled=false instead of deleting the tag, so that it works on
// registries without deletes and records who disabled it and when. A watcher reads the
// policy on every push event, so a change applies to the next push, on every instance.
//
// Pushes to the policy repository are never images: the watcher ignores them, and its
// manifests are artifacts rill never converts.
package policy
