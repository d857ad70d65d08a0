package watch

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert/operation"
)

// Fleet profiles (see docs/formats.md, "Profiles the fleet learns"): nodes POST the profile
// they recorded for a streaming artifact (artifact.ProfileReport) to ProfileHandler; the
// watcher keeps one report per node and artifact, and once it has enough merges them
// (MergeProfiles) and, when the result differs enough from the artifact's own profile
// (ProfileDistance), queues an operation that gives the tag's artifact the merged profile.

// ProfileConfig configures the profiles nodes report.
type ProfileConfig struct {
	// Token is the bearer token nodes must send; "" turns the endpoint off.
	Token string
	// MinReports is how many nodes' reports are enough (default 3).
	MinReports int
	// Delay is how long after an artifact's first report fewer reports are enough, one
	// included (default 10 minutes).
	Delay time.Duration
	// MinChange is the ProfileDistance from the artifact's profile below which the merged
	// profile is not applied (default 0.2).
	MinChange float64
}

func (c ProfileConfig) withDefaults() ProfileConfig {
	if c.MinReports <= 0 {
		c.MinReports = 3
	}
	if c.Delay <= 0 {
		c.Delay = 10 * time.Minute
	}
	if c.MinChange <= 0 {
		c.MinChange = 0.2
	}
	return c
}

// maxReportsPerArtifact bounds the nodes' reports kept per artifact (the most recent win).
const maxReportsPerArtifact = 64

// maxFileListings bounds the artifacts whose file lists are kept in memory.
const maxFileListings = 64

// ProfileReply is the body of a 202 answer to a profile report.
type ProfileReply struct {
	// Accepted counts the paths kept; Dropped those that are no file of the image or past
	// the prefetch budget.
	Accepted int `json:"accepted"`
	Dropped  int `json:"dropped"`
	// Reports counts the nodes' reports the watcher has for the artifact.
	Reports int `json:"reports"`
}

// profileState is what the watcher knows of one artifact's reports, persisted as
// StateDir/profiles/<hex>.json.
type profileState struct {
	Artifact   digest.Digest         `json:"artifact"`
	Repository string                `json:"repository"` // host/path
	Tag        string                `json:"tag"`
	First      time.Time             `json:"first"`
	Reports    map[string]nodeReport `json:"reports"`
	// DecidedAt is how many reports there were at the last decision (0: none yet); a new
	// decision needs MinReports more.
	DecidedAt int    `json:"decidedAt,omitempty"`
	Decision  string `json:"decision,omitempty"`
}

type nodeReport struct {
	Paths         []string  `json:"paths"`
	WindowSeconds float64   `json:"windowSeconds"`
	Received      time.Time `json:"received"`
}

type profileStore struct {
	dir string

	mu     sync.Mutex
	states map[digest.Digest]*profileState
	files  map[digest.Digest]map[string]int64
	// decide serializes decisions.
	decide sync.Mutex
}

func openProfiles(dir string, log *logrus.Entry) (*profileStore, error) {
	ps := &profileStore{dir: dir, states: map[digest.Digest]*profileState{}, files: map[digest.Digest]map[string]int64{}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("profiles state: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("profiles state: %w", err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		var st profileState
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err == nil {
			err = st.Artifact.Validate()
		}
		if err != nil {
			log.WithError(err).WithField("file", e.Name()).Warn("a profile state file does not parse; ignored")
			continue
		}
		ps.states[st.Artifact] = &st
	}
	return ps, nil
}

func (ps *profileStore) save(st *profileState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	p := filepath.Join(ps.dir, st.Artifact.Encoded()+".json")
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// ProfileHandler receives nodes' profile reports (POST artifact.ProfileReportPath): 202 with
// a ProfileReply once stored, 400 for a report that breaks the profile rules or names no
// file of the image, 401 without the token, 404 when profiles are off or the artifact is
// unknown, 413 for a body over artifact.MaxProfileReportSize.
func (w *Watcher) ProfileHandler() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			rw.Header().Set("Allow", http.MethodPost)
			http.Error(rw, "POST profile reports here", http.StatusMethodNotAllowed)
			return
		}
		if w.cfg.Profiles.Token == "" || w.profiles == nil {
			writeJSON(rw, http.StatusNotFound, apiError{Error: "this watcher takes no profiles (start it with --profile-token-file)"})
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(w.cfg.Profiles.Token)) != 1 {
			writeJSON(rw, http.StatusUnauthorized, apiError{Error: "missing or wrong token"})
			return
		}
		var rep artifact.ProfileReport
		dec := json.NewDecoder(http.MaxBytesReader(rw, r.Body, artifact.MaxProfileReportSize))
		dec.DisallowUnknownFields()
		err := dec.Decode(&rep)
		if err == nil {
			// One object, and nothing after it but white space, within the limit.
			if err = dec.Decode(&struct{}{}); err == io.EOF {
				err = nil
			} else if err == nil {
				err = errors.New("more than one JSON value")
			}
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeJSON(rw, http.StatusRequestEntityTooLarge, apiError{Error: fmt.Sprintf("a profile report is at most %d bytes", artifact.MaxProfileReportSize)})
				return
			}
			writeError(rw, fmt.Errorf("a profile report (JSON): %w: %w", err, errdefs.ErrInvalidArgument))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		reply, err := w.ReportProfile(ctx, rep)
		if err != nil {
			writeError(rw, err)
			return
		}
		writeJSON(rw, http.StatusAccepted, reply)
	})
}

// ReportProfile stores a node's report (its paths checked against the artifact's files) and
// decides whether the artifact's profile changes.
func (w *Watcher) ReportProfile(ctx context.Context, rep artifact.ProfileReport) (ProfileReply, error) {
	if w.profiles == nil {
		return ProfileReply{}, fmt.Errorf("this watcher takes no profiles: %w", errdefs.ErrNotFound)
	}
	if err := rep.Check(); err != nil {
		return ProfileReply{}, fmt.Errorf("profile report: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	named, err := reference.ParseNormalizedNamed(rep.Image)
	if err != nil {
		return ProfileReply{}, fmt.Errorf("profile report: %q is not an image reference: %w", rep.Image, errdefs.ErrInvalidArgument)
	}
	tagged, ok := named.(reference.Tagged)
	if !ok {
		return ProfileReply{}, fmt.Errorf("profile report: %s has no tag; profiles are learnt for tags: %w", rep.Image, errdefs.ErrInvalidArgument)
	}
	if d := reference.Domain(named); d != w.cfg.Registry {
		return ProfileReply{}, fmt.Errorf("profile report: %s is on %s, this watcher serves %s: %w", rep.Image, d, w.cfg.Registry, errdefs.ErrInvalidArgument)
	}
	files, err := w.artifactFiles(ctx, named.Name(), rep.Artifact)
	if err != nil {
		return ProfileReply{}, fmt.Errorf("profile report: the artifact %s: %w", rep.Artifact, err)
	}
	kept := KeepFiles(rep.Paths, files, artifact.MaxPrefetchBytes)
	reply := ProfileReply{Accepted: len(kept), Dropped: len(rep.Paths) - len(kept)}
	if len(kept) == 0 {
		return reply, fmt.Errorf("profile report: none of its %d paths is a file of the image: %w", len(rep.Paths), errdefs.ErrInvalidArgument)
	}

	w.profiles.mu.Lock()
	st := w.profiles.states[rep.Artifact]
	if st == nil {
		st = &profileState{Artifact: rep.Artifact, Repository: named.Name(), Tag: tagged.Tag(), First: time.Now().UTC(), Reports: map[string]nodeReport{}}
		w.profiles.states[rep.Artifact] = st
	}
	st.Repository, st.Tag = named.Name(), tagged.Tag()
	st.Reports[rep.Node] = nodeReport{Paths: kept, WindowSeconds: rep.WindowSeconds, Received: time.Now().UTC()}
	for len(st.Reports) > maxReportsPerArtifact {
		oldest := ""
		for n, r := range st.Reports {
			if oldest == "" || r.Received.Before(st.Reports[oldest].Received) {
				oldest = n
			}
		}
		delete(st.Reports, oldest)
	}
	reply.Reports = len(st.Reports)
	err = w.profiles.save(st)
	w.profiles.mu.Unlock()
	if err != nil {
		return ProfileReply{}, fmt.Errorf("store the profile report: %w", err)
	}
	w.log.WithFields(logrus.Fields{"artifact": rep.Artifact, "image": rep.Image, "node": rep.Node, "paths": len(kept), "dropped": reply.Dropped, "reports": reply.Reports}).
		Info("profile report received")
	w.decideProfile(ctx, rep.Artifact)
	return reply, nil
}

// artifactFiles returns the regular files of the artifact s of repo, read once per artifact.
func (w *Watcher) artifactFiles(ctx context.Context, repo string, s digest.Digest) (map[string]int64, error) {
	w.profiles.mu.Lock()
	files, ok := w.profiles.files[s]
	w.profiles.mu.Unlock()
	if ok {
		return files, nil
	}
	files, _, err := w.tags.ArtifactFiles(ctx, repo, s)
	if err != nil {
		return nil, err
	}
	w.profiles.mu.Lock()
	if len(w.profiles.files) >= maxFileListings {
		clear(w.profiles.files)
	}
	w.profiles.files[s] = files
	w.profiles.mu.Unlock()
	return files, nil
}

// decideProfiles decides every artifact whose delay may have passed.
func (w *Watcher) decideProfiles(ctx context.Context) {
	w.profiles.mu.Lock()
	var ds []digest.Digest
	for d, st := range w.profiles.states {
		if st.DecidedAt == 0 && len(st.Reports) > 0 {
			ds = append(ds, d)
		}
	}
	w.profiles.mu.Unlock()
	for _, d := range ds {
		w.decideProfile(ctx, d)
	}
}

// decideProfile merges the reports of artifact s, once there are enough, and queues the
// operation that applies the result when it differs enough from s's own profile.
func (w *Watcher) decideProfile(ctx context.Context, s digest.Digest) {
	w.profiles.decide.Lock()
	defer w.profiles.decide.Unlock()
	cfg := w.cfg.Profiles.withDefaults()
	w.profiles.mu.Lock()
	st0 := w.profiles.states[s]
	if st0 == nil {
		w.profiles.mu.Unlock()
		return
	}
	st := *st0
	n := len(st.Reports)
	nodes := make([]string, 0, n)
	for node := range st.Reports {
		nodes = append(nodes, node)
	}
	sort.Strings(nodes)
	var reports [][]string
	for _, node := range nodes {
		reports = append(reports, st.Reports[node].Paths)
	}
	w.profiles.mu.Unlock()

	enough := n >= cfg.MinReports || (n > 0 && time.Since(st.First) >= cfg.Delay)
	if st.DecidedAt > 0 {
		enough = n >= st.DecidedAt+cfg.MinReports
	}
	if !enough {
		return
	}
	log := w.log.WithFields(logrus.Fields{"artifact": s, "image": st.Repository + ":" + st.Tag, "reports": n})
	decision, err := w.applyProfile(ctx, &st, MergeProfiles(reports), cfg)
	if err != nil {
		log.WithError(err).Warn("could not decide the artifact's profile; trying again later")
		return
	}
	log.Info("fleet profile: " + decision)
	w.profiles.mu.Lock()
	defer w.profiles.mu.Unlock()
	if cur := w.profiles.states[s]; cur != nil {
		cur.DecidedAt, cur.Decision = n, decision
		if err := w.profiles.save(cur); err != nil {
			log.WithError(err).Warn("could not store the profile decision")
		}
	}
}

// applyProfile queues the operation giving the tag of st the merged profile, if the tag still
// binds st's artifact and merged differs enough from its profile. It says what it decided.
func (w *Watcher) applyProfile(ctx context.Context, st *profileState, merged []string, cfg ProfileConfig) (string, error) {
	image := st.Repository + ":" + st.Tag
	now, err := w.cfg.Remote.Resolve(ctx, image)
	if errdefs.IsNotFound(err) {
		return "nothing to do: the tag is gone", nil
	}
	if err != nil {
		return "", err
	}
	if ok, err := w.binds(ctx, st.Repository, now, st.Artifact); err != nil {
		return "", err
	} else if !ok {
		return fmt.Sprintf("nothing to do: %s no longer binds the artifact", image), nil
	}
	_, m, err := w.tags.ArtifactFiles(ctx, st.Repository, st.Artifact)
	if err != nil {
		return "", err
	}
	var current []string
	if enc := m.Annotations[artifact.AnnotationPrefetch]; enc != "" {
		if current, err = artifact.DecodeProfile(enc); err != nil {
			current = nil // a broken profile is replaced
		}
	}
	if d := ProfileDistance(current, merged); d < cfg.MinChange {
		return fmt.Sprintf("kept the artifact's profile: the merged one (%d paths) differs by %.2f, less than %.2f", len(merged), d, cfg.MinChange), nil
	}
	spec := operation.CreateSpec{Profile: merged, IfBinds: st.Artifact}
	if p := m.Annotations[artifact.AnnotationPlatform]; p != "" {
		spec.Platforms = []string{p}
	}
	op, _, err := w.queue.Submit(operation.Request{Repository: st.Repository, Tag: st.Tag, Digest: now.Digest, Trigger: "fleet profile", Create: &spec})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("queued operation %s: the merged profile of %d reports (%d paths)", op.ID, len(st.Reports), len(merged)), nil
}

// binds reports whether desc (what a tag names) is a binding index that binds artifact s.
func (w *Watcher) binds(ctx context.Context, repo string, desc ocispec.Descriptor, s digest.Digest) (bool, error) {
	if desc.MediaType != ocispec.MediaTypeImageIndex {
		return false, nil
	}
	raw, err := w.cfg.Remote.FetchManifest(ctx, repo+"@"+desc.Digest.String(), desc)
	if err != nil {
		return false, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return false, nil
	}
	for _, m := range idx.Manifests {
		if m.Annotations[artifact.AnnotationBinding] == s.String() {
			return true, nil
		}
	}
	return false, nil
}

// stillBinds checks, when a fleet profile's operation runs, that the tag names what it named
// when the operation was queued and binds the artifact the profile was learnt for; else it
// says why the operation ends without doing anything.
func (w *Watcher) stillBinds(ctx context.Context, op operation.Operation, now ocispec.Descriptor) string {
	if now.Digest != op.Digest {
		return fmt.Sprintf("skipped: %s names %s now, not %s as when the profile was learnt", op.Image(), now.Digest, op.Digest)
	}
	ok, err := w.binds(ctx, op.Repository, now, op.Create.IfBinds)
	if err != nil || !ok {
		return fmt.Sprintf("skipped: %s no longer binds the artifact %s the profile was learnt for", op.Image(), op.Create.IfBinds)
	}
	return ""
}

// KeepFiles returns the paths of profile that are regular files of files (path → size), in
// order, up to budget bytes of file data in all: a path past the budget is dropped.
func KeepFiles(profile []string, files map[string]int64, budget int64) []string {
	var out []string
	var total int64
	for _, p := range profile {
		size, ok := files[p]
		if !ok || total+size > budget {
			continue
		}
		total += size
		out = append(out, p)
	}
	return out
}

// MergeProfiles merges several nodes' profiles of one artifact: a path's place is the median
// of its ranks (0-based positions) in the profiles that list it (ties: listed by more
// profiles first, then by name); with three profiles or more, a path only one lists is
// dropped (one node's accident, not the image's start). At most artifact.MaxProfilePaths
// paths are kept.
func MergeProfiles(profiles [][]string) []string {
	ranks := map[string][]int{}
	for _, p := range profiles {
		for i, path := range p {
			ranks[path] = append(ranks[path], i)
		}
	}
	minSeen := 1
	if len(profiles) >= 3 {
		minSeen = 2
	}
	type placed struct {
		path   string
		median float64
		seen   int
	}
	var all []placed
	for path, rs := range ranks {
		if len(rs) < minSeen {
			continue
		}
		slices.Sort(rs)
		med := float64(rs[len(rs)/2])
		if len(rs)%2 == 0 {
			med = float64(rs[len(rs)/2-1]+rs[len(rs)/2]) / 2
		}
		all = append(all, placed{path, med, len(rs)})
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.median != b.median {
			return a.median < b.median
		}
		if a.seen != b.seen {
			return a.seen > b.seen
		}
		return a.path < b.path
	})
	if len(all) > artifact.MaxProfilePaths {
		all = all[:artifact.MaxProfilePaths]
	}
	out := make([]string, len(all))
	for i, p := range all {
		out[i] = p.path
	}
	return out
}

// ProfileDistance measures how much profile b differs from a: the Jaccard distance of their
// sets of paths, 1 - |a ∩ b| / |a ∪ b| (0: the same files, 1: none in common or a empty and
// b not). Order is left out on purpose: prefetch fetches the files in the profile's order,
// but a profile that names the same files in a slightly different order fetches the same
// bytes, and recordings differ in order from run to run (threads race to their first opens).
func ProfileDistance(a, b []string) float64 {
	sa := map[string]bool{}
	for _, p := range a {
		sa[p] = true
	}
	union, inter := len(sa), 0
	seen := map[string]bool{}
	for _, p := range b {
		if seen[p] {
			continue
		}
		seen[p] = true
		if sa[p] {
			inter++
		} else {
			union++
		}
	}
	if union == 0 {
		return 0
	}
	return 1 - float64(inter)/float64(union)
}
