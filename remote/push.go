package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// pushTimeout bounds one blob upload with its retries (the caller's context may end it
// sooner); large layers over slow links need long.
const pushTimeout = 2 * time.Hour

// PushBlob uploads the blob desc, read from content, to the repository of ref. A blob the
// repository has already is skipped; else it is mounted from the first repository of
// mountFrom (references or repository names on the same registry, asked in order) that has
// it, else uploaded in one PUT.
func (r *Registry) PushBlob(ctx context.Context, ref string, desc ocispec.Descriptor, content io.ReaderAt, mountFrom ...string) error {
	rr, err := parseRef(ref)
	if err != nil {
		return err
	}
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("push blob to %s: bad digest: %w", rr, errInvalidArgument)
	}
	scopes := []string{"repository:" + rr.repo + ":pull,push"}
	var froms []string
	for _, m := range mountFrom {
		repo, ok := mountSource(m, rr.host)
		if !ok || repo == rr.repo || slices.Contains(froms, repo) {
			continue
		}
		froms = append(froms, repo)
		scopes = append(scopes, "repository:"+repo+":pull")
	}
	for _, s := range scopes {
		ctx = docker.WithScope(ctx, s)
	}
	eps, err := r.endpoints(ctx, rr.host, docker.HostCapabilityPush)
	if err != nil {
		return err
	}
	ep := eps[0]
	host := ep.host.Host
	l := log.G(ctx).WithFields(log.Fields{"repository": rr.host + "/" + rr.repo, "digest": desc.Digest, "size": desc.Size})

	// Skip what is there.
	blobURL := ep.url(rr.repo, "blobs/"+desc.Digest.String(), nil)
	var exists bool
	err = r.withRetry(ctx, host, "blob_exists", func(ctx context.Context) error {
		req := &request{ep: ep, repo: rr.repo, method: http.MethodHead, u: blobURL, op: "blob_exists"}
		resp, err := r.send(ctx, req)
		if err != nil {
			return err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			drain(resp)
			exists = true
			return nil
		case http.StatusNotFound:
			drain(resp)
			return nil
		}
		return statusError(req, resp)
	})
	if err != nil {
		return fmt.Errorf("push blob %s to %s: %w", desc.Digest, rr, err)
	}
	if exists {
		l.Debug("blob exists; not pushed")
		return nil
	}

	err = r.retryWithin(ctx, pushTimeout, host, "blob_upload", func(ctx context.Context) error {
		loc, done, err := r.startUpload(ctx, ep, rr, desc.Digest, froms)
		if err != nil || done {
			if done {
				l.Debug("blob mounted from another repository")
			}
			return err
		}
		q := loc.Query()
		q.Set("digest", desc.Digest.String())
		loc.RawQuery = q.Encode()
		req := &request{
			ep: ep, repo: rr.repo, method: http.MethodPut, u: loc, op: "blob_upload",
			header:  http.Header{"Content-Type": {"application/octet-stream"}},
			body:    func() io.Reader { return io.NewSectionReader(content, 0, desc.Size) },
			bodyLen: desc.Size,
		}
		resp, err := r.send(ctx, req)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusCreated {
			return statusError(req, resp)
		}
		drain(resp)
		return nil
	})
	if err != nil {
		return fmt.Errorf("push blob %s to %s: %w", desc.Digest, rr, err)
	}
	return nil
}

// mountSource is the repository m names on host: m is a reference, or a repository name
// taken to be on host. ok is false for a repository on another registry or a bad name.
func mountSource(m, host string) (repo string, ok bool) {
	first, _, hasSlash := strings.Cut(m, "/")
	if !hasSlash || !(strings.ContainsAny(first, ".:") || first == "localhost") {
		m = host + "/" + m
	}
	fr, err := parseRef(m)
	if err != nil || fr.host != host {
		return "", false
	}
	return fr.repo, true
}

// startUpload tries cross-repository mounts, then opens an upload session. done reports that
// a mount made the blob present.
func (r *Registry) startUpload(ctx context.Context, ep *endpoint, rr repoRef, d digest.Digest, froms []string) (*url.URL, bool, error) {
	post := func(q url.Values) (*url.URL, bool, error) {
		req := &request{ep: ep, repo: rr.repo, method: http.MethodPost, u: ep.url(rr.repo, "blobs/uploads/", q), op: "blob_upload"}
		resp, err := r.send(ctx, req)
		if err != nil {
			return nil, false, err
		}
		switch resp.StatusCode {
		case http.StatusCreated:
			drain(resp)
			return nil, true, nil
		case http.StatusAccepted:
			drain(resp)
			loc, err := resolveLocation(resp.Request.URL, resp.Header.Get("Location"))
			if err != nil {
				return nil, false, fmt.Errorf("POST %s: %w", redactURL(req.u), err)
			}
			return loc, false, nil
		}
		return nil, false, statusError(req, resp)
	}
	for i, from := range froms {
		loc, done, err := post(url.Values{"mount": {d.String()}, "from": {from}})
		if err != nil {
			var re *retryError
			if errors.As(err, &re) {
				return nil, false, err
			}
			// Refused (the repository is unknown, or not readable with these
			// credentials): not mountable from there.
			log.G(ctx).WithFields(log.Fields{"digest": d, "from": from}).WithError(err).Debug("cross-repository mount refused")
			continue
		}
		if done {
			return nil, true, nil
		}
		// 202: the repository does not have the blob, and the registry opened an ordinary
		// upload instead. The last one is used; earlier ones are cancelled so the next
		// repository can be asked.
		if i == len(froms)-1 {
			return loc, false, nil
		}
		r.cancelUpload(ctx, ep, rr, loc)
	}
	return post(nil)
}

// cancelUpload ends an upload session that will not be used. A failure only leaves the
// session for the registry to expire.
func (r *Registry) cancelUpload(ctx context.Context, ep *endpoint, rr repoRef, loc *url.URL) {
	req := &request{ep: ep, repo: rr.repo, method: http.MethodDelete, u: loc, op: "blob_upload_cancel"}
	resp, err := r.send(ctx, req)
	if err != nil {
		log.G(ctx).WithFields(log.Fields{"host": ep.host.Host}).WithError(err).Debug("cancel unused upload session")
		return
	}
	drain(resp)
	if resp.StatusCode >= 300 {
		log.G(ctx).WithFields(log.Fields{"host": ep.host.Host, "status": resp.StatusCode}).Debug("cancel unused upload session refused")
	}
}

// PushManifest uploads a manifest or index of mediaType to the repository of ref, at its tag
// when ref has one, else by digest. When the manifest has a subject and the registry does not
// index referrers itself, the tag-schema fallback index of the subject is updated.
func (r *Registry) PushManifest(ctx context.Context, ref string, mediaType string, content []byte) (ocispec.Descriptor, error) {
	rr, err := parseRef(ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(content), Size: int64(len(content))}
	if rr.digest != "" && rr.digest != desc.Digest {
		return ocispec.Descriptor{}, fmt.Errorf("push manifest to %s: content has digest %s: %w", rr, desc.Digest, errInvalidArgument)
	}
	var m struct {
		ArtifactType string              `json:"artifactType"`
		Config       *ocispec.Descriptor `json:"config"`
		Subject      *ocispec.Descriptor `json:"subject"`
		Annotations  map[string]string   `json:"annotations"`
	}
	if err := json.Unmarshal(content, &m); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push manifest to %s: %w: %w", rr, errInvalidArgument, err)
	}
	ctx = docker.WithScope(ctx, "repository:"+rr.repo+":pull,push")
	eps, err := r.endpoints(ctx, rr.host, docker.HostCapabilityPush)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	ep := eps[0]
	object := desc.Digest.String()
	if rr.tag != "" {
		object = rr.tag
	}
	subjectIndexed, err := r.putManifest(ctx, ep, rr, object, mediaType, content)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push manifest %s to %s: %w", desc.Digest, rr, err)
	}
	if m.Subject == nil || subjectIndexed == m.Subject.Digest.String() {
		return desc, nil
	}
	// No OCI-Subject answer: the registry may still serve the referrers API (some do
	// without saying so); else keep the fallback index.
	if _, err := r.referrersAPI(ctx, ep, rr, m.Subject.Digest, ""); err == nil {
		return desc, nil
	}
	entry := desc
	entry.ArtifactType = m.ArtifactType
	if entry.ArtifactType == "" && m.Config != nil {
		entry.ArtifactType = m.Config.MediaType
	}
	entry.Annotations = m.Annotations
	if err := r.updateFallbackIndex(ctx, ep, rr, m.Subject.Digest, func(ds []ocispec.Descriptor) []ocispec.Descriptor {
		if slices.ContainsFunc(ds, func(d ocispec.Descriptor) bool { return d.Digest == entry.Digest }) {
			return nil
		}
		return append(ds, entry)
	}); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push manifest %s to %s: referrers fallback index: %w", desc.Digest, rr, err)
	}
	return desc, nil
}

// RemoveReferrer drops the manifest referrer from the tag-schema fallback index of subject in
// the repository of ref (for registries without the referrers API, which forget deleted
// manifests by themselves). A missing index or entry is not an error.
func (r *Registry) RemoveReferrer(ctx context.Context, ref string, subject, referrer digest.Digest) error {
	rr, err := parseRef(ref)
	if err != nil {
		return err
	}
	ctx = docker.WithScope(ctx, "repository:"+rr.repo+":pull,push")
	eps, err := r.endpoints(ctx, rr.host, docker.HostCapabilityPush)
	if err != nil {
		return err
	}
	err = r.updateFallbackIndex(ctx, eps[0], rr, subject, func(ds []ocispec.Descriptor) []ocispec.Descriptor {
		out := slices.DeleteFunc(slices.Clone(ds), func(d ocispec.Descriptor) bool { return d.Digest == referrer })
		if len(out) == len(ds) {
			return nil
		}
		return out
	})
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// fallbackUpdateAttempts bounds how often updateFallbackIndex writes the index while other
// writers keep replacing it.
const fallbackUpdateAttempts = 10

// updateFallbackIndex reads the fallback index of subject (empty when absent), lets change
// edit its manifests (nil: nothing to do, the index already says what the caller wants) and
// writes it back. Registries have no conditional tag update, so two writers that read the
// index before either writes it would lose one's change: after each write it waits a moment,
// reads the index again and writes again when another writer's update replaced this one.
func (r *Registry) updateFallbackIndex(ctx context.Context, ep *endpoint, rr repoRef, subject digest.Digest, change func([]ocispec.Descriptor) []ocispec.Descriptor) error {
	for attempt := 0; ; attempt++ {
		idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
		idx.SchemaVersion = 2
		b, err := r.getFallbackIndex(ctx, ep, rr, subject)
		switch {
		case errdefs.IsNotFound(err):
		case err != nil:
			return err
		default:
			if err := json.Unmarshal(b, &idx); err != nil {
				return fmt.Errorf("parse fallback index %s: %w", FallbackTag(subject), err)
			}
		}
		ms := change(idx.Manifests)
		if ms == nil {
			return nil
		}
		if attempt == fallbackUpdateAttempts {
			return fmt.Errorf("update fallback index %s of %s: other writers replaced it %d times; push again: %w", FallbackTag(subject), rr, attempt, errdefs.ErrConflict)
		}
		if attempt > 0 {
			log.G(ctx).WithField("tag", FallbackTag(subject)).WithField("attempt", attempt+1).Info("fallback index replaced by another writer; writing it again")
		}
		idx.Manifests = ms
		idx.MediaType = ocispec.MediaTypeImageIndex
		nb, err := json.Marshal(idx)
		if err != nil {
			return err
		}
		if _, err := r.putManifest(ctx, ep, rr, FallbackTag(subject), ocispec.MediaTypeImageIndex, nb); err != nil {
			return err
		}
		// Let a writer that read the index before this write finish its own, then check.
		settle := fallbackSettle + time.Duration(rand.Int64N(int64(fallbackSettle)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(settle):
		}
	}
}

// fallbackSettle is how long (plus up to as much again, at random) a writer of the fallback
// index waits before reading it back: longer than another writer on the same network takes
// from reading the index to writing it.
const fallbackSettle = 100 * time.Millisecond

// putManifest PUTs a manifest and returns the OCI-Subject header of the answer.
func (r *Registry) putManifest(ctx context.Context, ep *endpoint, rr repoRef, object, mediaType string, content []byte) (string, error) {
	var subject string
	err := r.withRetry(ctx, ep.host.Host, "manifest_push", func(ctx context.Context) error {
		req := &request{
			ep: ep, repo: rr.repo, method: http.MethodPut, u: ep.url(rr.repo, "manifests/"+object, nil), op: "manifest_push",
			header:  http.Header{"Content-Type": {mediaType}},
			body:    func() io.Reader { return bytes.NewReader(content) },
			bodyLen: int64(len(content)),
		}
		resp, err := r.send(ctx, req)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
			return statusError(req, resp)
		}
		subject = resp.Header.Get("OCI-Subject")
		drain(resp)
		return nil
	})
	return subject, err
}
