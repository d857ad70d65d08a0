// Package credentials gives rill's registry requests the credentials of the image they read,
// per registry host and repository, from sources in order:
//
//  1. the credentials kubelet passed in CRI PullImage for the image (a pod's imagePullSecrets),
//     captured by rill's CRI proxy into a [Store]: kept on disk (root-only, 0600) for as long
//     as a streamed layer of the repository is served, so they survive a restart, and removed
//     with the last such layer;
//  2. kubelet's credential provider exec plugins ([Providers]: the CredentialProviderConfig
//     file format, matchImages, cache durations, the credentialprovider.kubelet.k8s.io
//     request/response protocol);
//  3. a Docker config.json;
//  4. none: anonymous.
//
// A [Keychain] chains them for remote/: when the registry refuses a credential (401/403), the
// keychain remembers that for a while and answers with the next one — the next credential of
// the same source, or the next source — so reads recover as soon as any source has a fresh
// credential. Secrets are never logged nor put in errors.
package credentials
