package watch

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// envelope builds a notification as distribution sends it.
func envelope(events ...string) string {
	return `{"events":[` + strings.Join(events, ",") + `]}`
}

func event(action, mediaType, repo, tag string, d digest.Digest) string {
	return sizedEvent(action, mediaType, repo, tag, d, 123)
}

func sizedEvent(action, mediaType, repo, tag string, d digest.Digest, size int64) string {
	return fmt.Sprintf(`{"id":"e1","timestamp":"2026-01-01T00:00:00Z","action":%q,"target":{"mediaType":%q,"digest":%q,"size":%d,"length":%d,"repository":%q,"url":"http://r/v2/%s/manifests/%s","tag":%q},"request":{"id":"r1","addr":"127.0.0.1:1","host":"127.0.0.1:5000","method":"PUT","useragent":"test"},"actor":{},"source":{"addr":"x","instanceID":"i"}}`,
		action, mediaType, d, size, size, repo, repo, d, tag)
}

const (
	ociManifest = "application/vnd.oci.image.manifest.v1+json"
	ociIndex    = "application/vnd.oci.image.index.v1+json"
	docker2     = "application/vnd.docker.distribution.manifest.v2+json"
)

// Which events are candidates: manifest pushes by tag, outside the policy repository and the
// fallback tags. Everything rill pushes by digest, every blob, pull and delete is dropped.
func TestPushes(t *testing.T) {
	d := digest.FromString("m")
	for _, tc := range []struct {
		name  string
		event string
		want  bool
	}{
		{"OCI manifest by tag", event("push", ociManifest, "team/app", "v1", d), true},
		{"OCI index by tag", event("push", ociIndex, "team/app", "v1", d), true},
		{"Docker manifest by tag", event("push", docker2, "team/app", "v1", d), true},
		{"manifest by digest (rill's artifacts)", event("push", ociManifest, "team/app", "", d), false},
		{"fallback referrers index", event("push", ociIndex, "team/app", "sha256-"+d.Encoded(), d), false},
		{"policy repository", event("push", ociManifest, "rill/policy", "repo-abc", d), false},
		{"layer blob", event("push", "application/vnd.oci.image.layer.v1.tar+gzip", "team/app", "", d), false},
		{"blob of unknown type", event("push", "application/octet-stream", "team/app", "v1", d), false},
		{"pull", event("pull", ociManifest, "team/app", "v1", d), false},
		{"delete", event("delete", ociManifest, "team/app", "v1", d), false},
		{"bad digest", event("push", ociManifest, "team/app", "v1", "sha256:zz"), false},
		{"bad tag", event("push", ociManifest, "team/app", "-v1", d), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, err := ParseEnvelope(strings.NewReader(envelope(tc.event)))
			if err != nil {
				t.Fatal(err)
			}
			ps := Pushes(env, "rill/policy")
			if got := len(ps) == 1; got != tc.want {
				t.Fatalf("Pushes = %+v, want a push: %v", ps, tc.want)
			}
			if tc.want && (ps[0].Repository != "team/app" || ps[0].Tag != "v1" || ps[0].Digest != d || ps[0].Size != 123) {
				t.Fatalf("push = %+v", ps[0])
			}
		})
	}
}

func TestParseEnvelopeRejectsGarbage(t *testing.T) {
	for _, body := range []string{"", "{", "[]", `{"events":null}`, `{}`, "null", `{"events":"x"}`} {
		if _, err := ParseEnvelope(strings.NewReader(body)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ParseEnvelope(%q): %v, want InvalidArgument", body, err)
		}
	}
	// Many events in one envelope, as distribution batches them.
	var evs []string
	for i := range 50 {
		evs = append(evs, event("push", ociManifest, "team/app", fmt.Sprintf("v%d", i), digest.FromString(fmt.Sprint(i))))
	}
	env, err := ParseEnvelope(strings.NewReader(envelope(evs...)))
	if err != nil || len(Pushes(env, "rill/policy")) != 50 {
		t.Fatalf("a batch of 50 pushes: %v", err)
	}
}

// FuzzParseEnvelope: no input makes the parser or the filter panic, and every push it keeps
// is a valid candidate.
func FuzzParseEnvelope(f *testing.F) {
	d := digest.FromString("m")
	f.Add([]byte(envelope(event("push", ociManifest, "team/app", "v1", d))))
	f.Add([]byte(envelope(event("push", ociIndex, "a/b/c", "sha256-"+d.Encoded(), d), event("pull", docker2, "x", "y", d))))
	f.Add([]byte(`{"events":[{"action":"push","target":{}}]}`))
	f.Add([]byte(`{"events":[{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := ParseEnvelope(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, p := range Pushes(env, "rill/policy") {
			if p.Tag == "" || p.Repository == "" || p.Repository == "rill/policy" || p.Digest.Validate() != nil || !isManifestMediaType(p.MediaType) {
				t.Fatalf("Pushes kept an invalid candidate %+v", p)
			}
		}
	})
}
