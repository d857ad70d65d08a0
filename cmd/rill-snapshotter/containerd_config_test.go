package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/pelletier/go-toml/v2"
	"github.com/rillstream/rill/config"
)

// The containerd config fragments under script/containerd are what an operator merges into
// containerd's config. These tests read them with containerd's own loader (containerd 2.x
// reads version 2 files as well) and check each plugin section against the keys of the
// containerd version the fragment is for; a misspelt key is an error, not a silent default.

const (
	fragmentV2  = "../../script/containerd/config-v2.toml"
	fragmentV17 = "../../script/containerd/config-v1.7.toml"
)

func loadContainerdConfig(t *testing.T, path string) *srvconfig.Config {
	t.Helper()
	var cfg srvconfig.Config
	if err := srvconfig.LoadConfig(context.Background(), path, &cfg); err != nil {
		t.Fatalf("containerd cannot load %s: %v", path, err)
	}
	return &cfg
}

// checkProxyPlugin checks proxy_plugins.rill: a snapshotter at the daemon's default address.
func checkProxyPlugin(t *testing.T, cfg *srvconfig.Config) srvconfig.ProxyPlugin {
	t.Helper()
	p, ok := cfg.ProxyPlugins["rill"]
	if !ok {
		t.Fatalf("no proxy_plugins.rill; proxy plugins: %v", cfg.ProxyPlugins)
	}
	if p.Type != "snapshot" {
		t.Errorf("proxy_plugins.rill.type = %q, want snapshot", p.Type)
	}
	if p.Address != config.DefaultAddress {
		t.Errorf("proxy_plugins.rill.address = %q, want the daemon's default %q", p.Address, config.DefaultAddress)
	}
	return p
}

// pluginSection decodes plugins.<id> strictly into out: a key out does not have fails.
func pluginSection(t *testing.T, cfg *srvconfig.Config, id string, out any) {
	t.Helper()
	data, ok := cfg.Plugins[id]
	if !ok {
		t.Fatalf("no section plugins.%q; sections: %v", id, keys(cfg.Plugins))
	}
	b, err := toml.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields().Decode(out); err != nil {
		if se, ok := errors.AsType[*toml.StrictMissingError](err); ok {
			t.Fatalf("plugins.%q has keys containerd does not know:\n%s", id, se.String())
		}
		t.Fatalf("plugins.%q: %v", id, err)
	}
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// containerd 2.x: version 3; the proxy plugin exports enable_remote_snapshot_annotations (else
// transfer-service pulls carry no CRI labels); CRI images unpack into rill; the transfer
// service has an unpack platform naming rill (else "no unpack platforms defined").
func TestContainerdV2Fragment(t *testing.T) {
	check := func(t *testing.T, cfg *srvconfig.Config) {
		t.Helper()
		if cfg.Version != 3 {
			t.Errorf("version = %d, want 3", cfg.Version)
		}
		p := checkProxyPlugin(t, cfg)
		if got := p.Exports["enable_remote_snapshot_annotations"]; got != "true" {
			t.Errorf("proxy_plugins.rill.exports.enable_remote_snapshot_annotations = %q, want \"true\"", got)
		}
		var images struct {
			Snapshotter string `toml:"snapshotter"` // internal/cri/config.ImageConfig
		}
		pluginSection(t, cfg, "io.containerd.cri.v1.images", &images)
		if images.Snapshotter != "rill" {
			t.Errorf("plugins.'io.containerd.cri.v1.images'.snapshotter = %q, want rill", images.Snapshotter)
		}
		var transfer struct {
			UnpackConfig []struct { // plugins/transfer unpackConfiguration
				Platform    string `toml:"platform"`
				Snapshotter string `toml:"snapshotter"`
				Differ      string `toml:"differ"`
			} `toml:"unpack_config"`
		}
		pluginSection(t, cfg, "io.containerd.transfer.v1.local", &transfer)
		found := false
		for _, u := range transfer.UnpackConfig {
			if u.Snapshotter == "rill" {
				found = true
				if u.Platform != "linux/amd64" || u.Differ != "walking" {
					t.Errorf("unpack_config for rill: platform %q differ %q, want linux/amd64 and walking", u.Platform, u.Differ)
				}
			}
		}
		if !found {
			t.Errorf("no unpack_config entry names rill: %+v", transfer.UnpackConfig)
		}
	}
	t.Run("merged", func(t *testing.T) {
		check(t, loadContainerdConfig(t, fragmentV2))
	})
	// The fragment's comment offers containerd's imports instead of merging.
	t.Run("imported", func(t *testing.T) {
		abs, err := filepath.Abs(fragmentV2)
		if err != nil {
			t.Fatal(err)
		}
		main := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(main, []byte("version = 3\nimports = [\""+abs+"\"]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		check(t, loadContainerdConfig(t, main))
	})
}

// containerd 1.7: version 2; CRI pulls on the client side and passes the image's labels to the
// snapshotter only with disable_snapshot_annotations = false (1.7's default is true), both
// under plugins."io.containerd.grpc.v1.cri".containerd, beside snapshotter = "rill".
func TestContainerdV17Fragment(t *testing.T) {
	cfg := loadContainerdConfig(t, fragmentV17)
	if cfg.Version != 2 {
		t.Errorf("version = %d, want 2 (containerd 1.7 reads version 2)", cfg.Version)
	}
	checkProxyPlugin(t, cfg)
	var cri struct {
		Containerd struct { // pkg/cri/config.ContainerdConfig of containerd 1.7
			Snapshotter                string `toml:"snapshotter"`
			DisableSnapshotAnnotations *bool  `toml:"disable_snapshot_annotations"`
		} `toml:"containerd"`
	}
	pluginSection(t, cfg, "io.containerd.grpc.v1.cri", &cri)
	if cri.Containerd.Snapshotter != "rill" {
		t.Errorf(`plugins."io.containerd.grpc.v1.cri".containerd.snapshotter = %q, want rill`, cri.Containerd.Snapshotter)
	}
	if d := cri.Containerd.DisableSnapshotAnnotations; d == nil || *d {
		t.Errorf(`plugins."io.containerd.grpc.v1.cri".containerd.disable_snapshot_annotations must be set to false (1.7 defaults to true), got %v`, d)
	}
}
