package operation

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
)

// store keeps one JSON file per operation in a directory, each written atomically.
type store struct {
	dir string
}

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("operation state directory: %w", err)
	}
	return &store{dir: dir}, nil
}

func (s *store) path(id string) string { return filepath.Join(s.dir, id+".json") }

// save writes op: to a temporary file, synced, renamed over the old one, and the directory
// synced, so that a crash leaves either the old or the new content.
func (s *store) save(op *Operation) error {
	c := *op
	c.Progress = nil
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.dir, "."+op.ID+".*.tmp")
	if err != nil {
		return fmt.Errorf("persist operation %s: %w", op.ID, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path(op.ID))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("persist operation %s: %w", op.ID, err)
	}
	return s.syncDir()
}

func (s *store) remove(id string) error {
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return s.syncDir()
}

func (s *store) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// load reads every operation. Temporary files of interrupted writes are removed; files that
// do not parse are set aside (renamed *.corrupt) and logged, so one bad file does not keep
// the watcher down.
func (s *store) load(log *logrus.Entry) ([]*Operation, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read the operations: %w", err)
	}
	var ops []*Operation
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(s.dir, name)
		switch {
		case strings.HasSuffix(name, ".tmp"):
			os.Remove(p)
			continue
		case !strings.HasSuffix(name, ".json") || e.IsDir():
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read operation %s: %w", name, err)
		}
		var op Operation
		if err := json.Unmarshal(data, &op); err != nil || op.ID+".json" != name || op.Digest.Validate() != nil {
			log.WithField("file", p).WithError(err).Warn("an operation file does not parse; set aside as .corrupt")
			_ = os.Rename(p, p+".corrupt")
			continue
		}
		ops = append(ops, &op)
	}
	return ops, nil
}
