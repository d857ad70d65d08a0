package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	logtest "github.com/sirupsen/logrus/hooks/test"
)

// A streaming.docker_config that names no file is said at start, not silently no credentials.
func TestMissingDockerConfigWarns(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "config.json")
	if err := os.WriteFile(present, []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, warn := range map[string]bool{filepath.Join(dir, "missing.json"): true, present: false, "": false} {
		logger, logs := logtest.NewNullLogger()
		warnMissingDockerConfig(logger, path)
		e := logs.LastEntry()
		switch {
		case warn && (e == nil || !strings.Contains(e.Message, "docker_config") || e.Data["docker_config"] != path):
			t.Errorf("docker_config %q that does not exist: logged %v, want a warning naming it", path, e)
		case !warn && e != nil:
			t.Errorf("docker_config %q: logged %q", path, e.Message)
		}
	}
}
