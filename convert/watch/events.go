package watch

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/convert"
)

// EventsMediaType is the media type of the registry's notification envelopes (the one the
// notification specification names). distribution 3 sends the same envelope as
// EventsMediaTypeV2; both are accepted.
const (
	EventsMediaType   = "application/vnd.docker.distribution.events.v1+json"
	EventsMediaTypeV2 = "application/vnd.docker.distribution.events.v2+json"
)

// maxEnvelopeSize bounds a notification body (distribution sends a few events per envelope).
const maxEnvelopeSize = 4 << 20

// Envelope is a notification as distribution sends it.
type Envelope struct {
	Events []Event `json:"events"`
}

// Event is one registry event (the fields rill uses).
type Event struct {
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	Action    string `json:"action"`
	Target    struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Size       int64  `json:"size"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		ID        string `json:"id"`
		Host      string `json:"host"`
		Method    string `json:"method"`
		UserAgent string `json:"useragent"`
	} `json:"request"`
}

// ParseEnvelope reads a notification envelope; InvalidArgument when it is not one.
func ParseEnvelope(r io.Reader) (Envelope, error) {
	var env Envelope
	dec := json.NewDecoder(io.LimitReader(r, maxEnvelopeSize+1))
	if err := dec.Decode(&env); err != nil {
		return Envelope{}, fmt.Errorf("parse the notification: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if env.Events == nil {
		return Envelope{}, fmt.Errorf("the notification has no events list: %w", errdefs.ErrInvalidArgument)
	}
	return env, nil
}

// Push is a manifest pushed by tag: a candidate for conversion.
type Push struct {
	Repository string // the repository's path on the registry (no host)
	Tag        string
	Digest     digest.Digest
	MediaType  string
	Size       int64
}

// Pushes returns the events of env that may be new images: manifest or index pushes by tag,
// outside the policy repository, not to a tag-schema fallback tag. Everything else is
// dropped here, rill's own pushes of artifacts (by digest) and fallback indexes among them.
func Pushes(env Envelope, policyRepository string) []Push {
	var out []Push
	for _, ev := range env.Events {
		t := ev.Target
		if ev.Action != "push" || t.Tag == "" || t.Repository == "" || t.Repository == policyRepository {
			continue
		}
		if !isManifestMediaType(t.MediaType) || convert.IsFallbackTag(t.Tag) {
			continue
		}
		d, err := digest.Parse(t.Digest)
		if err != nil {
			continue
		}
		if _, err := reference.ParseNormalizedNamed("example.com/" + t.Repository + ":" + t.Tag); err != nil {
			continue
		}
		out = append(out, Push{Repository: t.Repository, Tag: t.Tag, Digest: d, MediaType: t.MediaType, Size: t.Size})
	}
	return out
}

func isManifestMediaType(mt string) bool {
	switch mt {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2ManifestList:
		return true
	}
	return false
}
