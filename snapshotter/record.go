package snapshotter

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/artifact"
	rillfs "github.com/rillstream/rill/fs"
)

// recordings collects the layers of each image being recorded.
type recordings struct {
	mu     sync.Mutex
	images map[string][]*mountedLayer
	// artifacts is the streaming artifact of each image being recorded ("" for none).
	artifacts map[string]digest.Digest
	// reports sends finished profiles to the fleet's watcher (nil: not sent).
	reports *reporter
}

// record adds a freshly mounted layer of image, streamed from the artifact art ("" for a
// third-party eStargz image), to its recording; the first layer of an image schedules the
// writing of its profile when the window is over.
func (s *Snapshotter) record(image string, art digest.Digest, ml *mountedLayer) {
	if s.recordWindow <= 0 || image == "" {
		return
	}
	s.recs.mu.Lock()
	defer s.recs.mu.Unlock()
	if s.recs.images == nil {
		s.recs.images = map[string][]*mountedLayer{}
		s.recs.artifacts = map[string]digest.Digest{}
	}
	first := len(s.recs.images[image]) == 0
	s.recs.images[image] = append(s.recs.images[image], ml)
	if art != "" {
		s.recs.artifacts[image] = art
	}
	if first {
		time.AfterFunc(s.recordWindow+time.Second, func() { s.writeProfile(image) })
	}
}

// A profile names whole files, and prefetch fetches them whole. A big file of which the start
// read only a small part (a data file read in places, a large library touched in a few pages)
// is left out: prefetching it would put its whole size on the link while the container waits
// for other bytes; its parts are better fetched as they are read.
const (
	sparseFileMin      = 8 << 20 // files smaller than this are kept whatever was read
	sparseReadFraction = 8       // ... larger ones need more than 1/8 of them read
)

func sparselyRead(a rillfs.Access) bool {
	return !a.Unmetered && a.Size >= sparseFileMin && a.Read*sparseReadFraction < a.Size
}

// writePendingProfiles writes the profiles of every image still being recorded, with what was
// recorded so far: a daemon that stops before a window is over keeps what it saw. Reports
// still being sent are given up (the daemon stops; a report never delays that).
func (s *Snapshotter) writePendingProfiles() {
	defer s.recs.reports.stop()
	s.recs.mu.Lock()
	images := make([]string, 0, len(s.recs.images))
	for image := range s.recs.images {
		images = append(images, image)
	}
	s.recs.mu.Unlock()
	for _, image := range images {
		s.writeProfile(image)
	}
}

// writeProfile merges the first opens of the image's layers by time and writes the profile.
func (s *Snapshotter) writeProfile(image string) {
	s.recs.mu.Lock()
	layers := s.recs.images[image]
	art := s.recs.artifacts[image]
	delete(s.recs.images, image)
	delete(s.recs.artifacts, image)
	s.recs.mu.Unlock()
	var all []rillfs.Access
	for _, ml := range layers {
		got, _ := ml.mounted.Recorded()
		all = append(all, got...)
	}
	if len(all) == 0 {
		return
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].At.Before(all[j].At) })
	p := artifact.ProfileFile{Image: image, Recorded: time.Now().UTC()}
	seen := map[string]bool{}
	partial := 0
	for _, a := range all {
		if seen[a.Path] {
			continue
		}
		seen[a.Path] = true
		if sparselyRead(a) {
			partial++
			continue
		}
		p.Paths = append(p.Paths, a.Path)
	}
	path := ProfilePath(s.root, image)
	entry := log.L.WithField("image", image).WithField("profile", path).WithField("files", len(p.Paths)).WithField("left_out_sparsely_read", partial)
	data, err := json.MarshalIndent(p, "", "  ")
	if err == nil {
		err = os.MkdirAll(filepath.Dir(path), 0o700)
	}
	if err == nil {
		err = writeFileAtomic(path, data)
	}
	if err != nil {
		entry.WithError(err).Warn("cannot write the recorded prefetch profile")
		return
	}
	entry.Info("prefetch profile recorded")
	if art != "" && len(p.Paths) > 0 {
		s.recs.reports.send(artifact.ProfileReport{Artifact: art, Image: image, WindowSeconds: s.recordWindow.Seconds(), Recorded: p.Recorded, Paths: p.Paths})
	}
}

// ProfilePath is where the recorded profile of image is written under root: a readable name
// from the reference, made unique by a hash of it.
func ProfilePath(root, image string) string {
	sum := sha256.Sum256([]byte(image))
	name := strings.NewReplacer("/", "_", ":", "_", "@", "_").Replace(image)
	if len(name) > 100 {
		name = name[:100]
	}
	return filepath.Join(root, "profiles", fmt.Sprintf("%s-%x.json", name, sum[:4]))
}
