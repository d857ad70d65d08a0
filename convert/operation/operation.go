package operation

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// State is where an operation is in its life.
type State string

// The states of an operation. Succeeded, Failed and Canceled are final.
const (
	NotStarted State = "NotStarted"
	Running    State = "Running"
	Succeeded  State = "Succeeded"
	Failed     State = "Failed"
	Canceled   State = "Canceled"
)

// Final reports whether s is a final state.
func (s State) Final() bool { return s == Succeeded || s == Failed || s == Canceled }

// Request is what to work on: the image at Repository:Tag, as it named Digest when the
// request was made (or the manifest Digest alone, for an operator's create by digest).
type Request struct {
	Repository string        `json:"repository"` // host/path
	Tag        string        `json:"tag"`
	Digest     digest.Digest `json:"digest"`
	// Trigger says what asked for the operation ("webhook", "reconcile", "rill create").
	Trigger string `json:"trigger,omitempty"`
	// Create is set for an operator's request (rill create --no-wait): the choices of rill
	// create, which the watcher applies. Such a manual operation does not depend on the
	// repository's policy and is never merged with another one.
	Create *CreateSpec `json:"create,omitempty"`
}

// CreateSpec holds the choices of an operator's rill create. Zero values leave the
// watcher's own settings.
type CreateSpec struct {
	Force  bool `json:"force,omitempty"`
	NoBind bool `json:"noBind,omitempty"`
	// Profile is the prefetch profile (paths in first-access order).
	Profile []string `json:"profile,omitempty"`
	// Platforms are the streaming platforms ("linux/amd64"); none: the watcher's.
	Platforms        []string `json:"platforms,omitempty"`
	ChunkSize        int      `json:"chunkSize,omitempty"`
	CompressionLevel int      `json:"compressionLevel,omitempty"`
	VerifyChunks     bool     `json:"verifyChunks,omitempty"`
	// IfBinds, when set, makes the create apply only while the tag still names the digest it
	// named when the operation was submitted and binds this artifact (the watcher's fleet
	// profiles: a profile learnt for one artifact is not given to another image).
	IfBinds digest.Digest `json:"ifBinds,omitempty"`
}

// Image returns the tagged reference, or the reference by digest when there is no tag.
func (r Request) Image() string {
	if r.Tag == "" {
		return r.Repository + "@" + r.Digest.String()
	}
	return r.Repository + ":" + r.Tag
}

// Manual reports whether an operator asked for the operation (rill create --no-wait).
func (r Request) Manual() bool { return r.Create != nil }

// key identifies the operation of a request: one per tag and digest. Manual requests have
// none: each is an operation of its own.
func (r Request) key() string {
	if r.Manual() {
		return ""
	}
	return r.Image() + "@" + r.Digest.String()
}

// serial identifies the manifest: operations on it run one at a time.
func (r Request) serial() string { return r.Repository + "@" + r.Digest.String() }

// Progress is how far a running operation got.
type Progress struct {
	// Phase is what it does now, in words ("converting", "pushing", "binding").
	Phase string `json:"phase,omitempty"`
	// Layers and LayersDone count the layers to convert and those done.
	Layers     int `json:"layers,omitempty"`
	LayersDone int `json:"layersDone,omitempty"`
	// Bytes and BytesRead count the compressed bytes of the original layers.
	Bytes     int64 `json:"bytes,omitempty"`
	BytesRead int64 `json:"bytesRead,omitempty"`
}

// Operation is one queued unit of work and what became of it.
type Operation struct {
	ID string `json:"id"`
	Request
	State State `json:"state"`
	// Progress is set while Running (it is not persisted: a resumed operation starts over).
	Progress *Progress `json:"progress,omitempty"`
	// Message says what the operation did (Succeeded), why it failed (Failed), or why it
	// waits (NotStarted after a failed attempt).
	Message string `json:"message,omitempty"`
	// Attempts counts the runs started, retries and resumptions included.
	Attempts    int       `json:"attempts"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	Started     time.Time `json:"started,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
}
