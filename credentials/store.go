package credentials

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/rillstream/rill/remote"
)

// maxPerScope bounds the credentials kept per repository: pods of several namespaces may pull
// one image with secrets of their own.
const maxPerScope = 4

// Store keeps the credentials captured from CRI PullImage calls, per repository, for as long
// as a pull of the repository is in flight or a streamed layer read from it is served. Each
// repository's credentials are one file (0600) in a directory only root can enter (0700), so
// that they survive a restart of the daemon; the file goes with the last layer that used
// them. Secrets are never logged.
type Store struct {
	dir string

	mu     sync.Mutex
	scopes map[Scope]*scopeState
	layers map[string]Scope // served layer id → the repository it is read from
}

type scopeState struct {
	entries []*entry // most recent first
	users   map[string]bool
	pulls   int
	dirty   bool // entries changed since the file was written
	onDisk  bool
}

// entry is one captured credential.
type entry struct {
	Username      string    `json:"username,omitempty"`
	Secret        string    `json:"secret,omitempty"`
	RegistryToken string    `json:"registryToken,omitempty"`
	Pod           string    `json:"pod,omitempty"` // namespace/name, for logs
	Captured      time.Time `json:"captured"`
	// Confirmed is set once a pull with the credential succeeded.
	Confirmed bool `json:"confirmed,omitempty"`
	pulls     int  // in flight with it
}

func (e *entry) credential() remote.Credential {
	return remote.Credential{Username: e.Username, Secret: e.Secret, RegistryToken: e.RegistryToken}
}

// storeFile is the content of one repository's file.
type storeFile struct {
	Scope   Scope    `json:"scope"`
	Entries []*entry `json:"entries"`
}

var _ Source = (*Store)(nil)

// OpenStore opens the store in dir (created, or made, 0700) and loads what an earlier run left
// there. Loaded credentials are used by no layer until LayerServed says so; Prune drops the
// rest once the served layers are known. A file that cannot be read is removed, with a
// warning: its layers then read with the other sources.
func OpenStore(ctx context.Context, dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("credential store: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("credential store: %w", err)
	}
	s := &Store{dir: dir, scopes: map[Scope]*scopeState{}, layers: map[string]Scope{}}
	names, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("credential store: %w", err)
	}
	for _, n := range names {
		p := filepath.Join(dir, n.Name())
		if !strings.HasSuffix(n.Name(), ".json") {
			_ = os.Remove(p) // a temporary file of an interrupted write
			continue
		}
		var f storeFile
		data, err := os.ReadFile(p)
		if err == nil {
			err = json.Unmarshal(data, &f) // encoding/json errors quote no values
		}
		if err == nil && (f.Scope.Host == "" || f.Scope.Repository == "" || n.Name() != fileName(f.Scope)) {
			err = errors.New("not a credential file of this store")
		}
		if err != nil {
			log.G(ctx).WithError(err).WithField("path", p).Warn("credential file unreadable; removed")
			_ = os.Remove(p)
			continue
		}
		s.scopes[f.Scope] = &scopeState{entries: f.Entries, users: map[string]bool{}, onDisk: true}
	}
	return s, nil
}

// Name is the source's name in logs.
func (*Store) Name() string { return "cri" }

func fileName(s Scope) string {
	sum := sha256.Sum256([]byte(s.String()))
	return hex.EncodeToString(sum[:16]) + ".json"
}

// Capture records c, given by a CRI PullImage of image by pod ("namespace/name", for logs),
// as the first credential of the image's repository until done is called with whether the
// pull succeeded. A credential whose pull failed is forgotten unless an earlier pull with it
// succeeded.
func (s *Store) Capture(ctx context.Context, image string, c remote.Credential, pod string) (done func(pulled bool), err error) {
	scope, err := ScopeOf(image)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	st := s.scope(scope)
	var e *entry
	for i, x := range st.entries {
		if x.credential() == c {
			e = x
			st.entries = append(st.entries[:i], st.entries[i+1:]...)
			break
		}
	}
	if e == nil {
		e = &entry{Username: c.Username, Secret: c.Secret, RegistryToken: c.RegistryToken}
	}
	e.Pod, e.Captured = pod, time.Now().UTC()
	e.pulls++
	st.entries = append([]*entry{e}, st.entries...)
	if len(st.entries) > maxPerScope {
		st.entries = st.entries[:maxPerScope]
	}
	st.pulls++
	st.dirty = true
	s.mu.Unlock()
	log.G(ctx).WithFields(log.Fields{"scope": scope.String(), "pod": pod}).Info("pull credentials captured from CRI")

	var once sync.Once
	return func(pulled bool) {
		once.Do(func() { s.pullDone(ctx, scope, e, pulled) })
	}, nil
}

func (s *Store) scope(sc Scope) *scopeState {
	st, ok := s.scopes[sc]
	if !ok {
		st = &scopeState{users: map[string]bool{}}
		for id, x := range s.layers { // layers served before credentials were captured for them
			if x == sc {
				st.users[id] = true
			}
		}
		s.scopes[sc] = st
	}
	return st
}

func (s *Store) pullDone(ctx context.Context, sc Scope, e *entry, pulled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.scopes[sc]
	if st == nil {
		return
	}
	st.pulls--
	e.pulls--
	if pulled && !e.Confirmed {
		e.Confirmed, st.dirty = true, true
	}
	if !pulled && !e.Confirmed && e.pulls == 0 {
		for i, x := range st.entries {
			if x == e {
				st.entries = append(st.entries[:i], st.entries[i+1:]...)
				st.dirty = true
				break
			}
		}
	}
	s.settle(ctx, sc, st)
}

// settle writes or removes the repository's file after a change: credentials no pull and no
// layer needs go; those a served layer needs are written. Called with s.mu held.
func (s *Store) settle(ctx context.Context, sc Scope, st *scopeState) {
	entry := log.G(ctx).WithField("scope", sc.String())
	if st.pulls == 0 && (len(st.users) == 0 || len(st.entries) == 0) {
		if st.onDisk || len(st.entries) > 0 {
			entry.Info("pull credentials removed: no streamed layer uses them")
		}
		delete(s.scopes, sc) // s.layers keeps the layers: a later capture finds its users again
		if st.onDisk {
			if err := os.Remove(filepath.Join(s.dir, fileName(sc))); err != nil && !errors.Is(err, os.ErrNotExist) {
				entry.WithError(err).Warn("cannot remove a credential file")
			}
		}
		return
	}
	if !st.dirty || len(st.users) == 0 {
		return
	}
	if err := s.write(sc, st); err != nil {
		entry.WithError(err).Warn("cannot write pull credentials: they are kept in memory only, a restart loses them")
		return
	}
	st.dirty, st.onDisk = false, true
}

// write replaces the repository's file atomically; the file is 0600 from its creation.
func (s *Store) write(sc Scope, st *scopeState) error {
	data, err := json.Marshal(storeFile{Scope: sc, Entries: st.entries})
	if err != nil {
		return fmt.Errorf("encode credentials: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-") // mode 0600
	if err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.dir, fileName(sc))); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	return nil
}

// LayerServed says that the streamed layer id reads its blob through ref: the credentials of
// ref's repository are kept (on disk) until LayerRemoved.
func (s *Store) LayerServed(ctx context.Context, id, ref string) {
	sc, err := ScopeOf(ref)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Warn("streamed layer with an unreadable reference: its credentials are not tracked")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.layers[id] = sc
	st, ok := s.scopes[sc]
	if !ok {
		return // no CRI credentials for it
	}
	st.users[id] = true
	s.settle(ctx, sc, st)
}

// LayerRemoved says that the streamed layer id is gone; the credentials of its repository go
// with the last layer that used them.
func (s *Store) LayerRemoved(ctx context.Context, id, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc, ok := s.layers[id]
	if !ok {
		return
	}
	delete(s.layers, id)
	if st, ok := s.scopes[sc]; ok {
		delete(st.users, id)
		s.settle(ctx, sc, st)
	}
}

// Prune drops the credentials that no pull in flight and no served layer uses: at start,
// after the layers of the last run have been restored (LayerServed).
func (s *Store) Prune(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc, st := range s.scopes {
		s.settle(ctx, sc, st)
	}
}

// Lookup returns the captured credentials of the repository, most recent first.
func (s *Store) Lookup(_ context.Context, sc Scope) ([]Candidate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.scopes[sc]
	if !ok {
		return nil, nil
	}
	out := make([]Candidate, 0, len(st.entries))
	for _, e := range st.entries {
		origin := "cri"
		if e.Pod != "" {
			origin = "cri pod " + e.Pod
		}
		out = append(out, Candidate{Credential: e.credential(), Origin: origin})
	}
	return out, nil
}
