package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The documented example shows every key with its default: parsing it gives the defaults,
// and every field of Config appears in it.
func TestDocumentedExampleIsTheDefaults(t *testing.T) {
	data, err := os.ReadFile("../script/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatalf("script/config.toml does not parse: %v", err)
	}
	want := Default()
	want.Snapshotter.MountOptions = []string{}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("script/config.toml differs from Default():\n got %+v\nwant %+v", got, want)
	}
	for _, key := range tomlKeys(reflect.TypeOf(Config{}), "") {
		leaf := key[strings.LastIndex(key, ".")+1:]
		if !strings.Contains(string(data), "\n"+leaf+" = ") {
			t.Errorf("key %s is not documented in script/config.toml", key)
		}
	}
}

func tomlKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := prefix + f.Tag.Get("toml")
		if f.Type.Kind() == reflect.Struct {
			keys = append(keys, tomlKeys(f.Type, name+".")...)
			continue
		}
		keys = append(keys, name)
	}
	return keys
}

func TestParse(t *testing.T) {
	cases := []struct {
		name    string
		text    string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "empty file is the defaults", text: "", check: func(t *testing.T, c Config) {
			if !reflect.DeepEqual(c, Default()) {
				t.Fatalf("got %+v", c)
			}
		}},
		{name: "values override defaults", text: "root = \"/srv/rill\"\n[log]\nlevel = \"debug\"\n[snapshotter]\nasync_remove = false\nmount_options = [\"volatile\"]\n", check: func(t *testing.T, c Config) {
			if c.Root != "/srv/rill" || c.Log.Level != "debug" || c.Snapshotter.AsyncRemove || c.Snapshotter.MountOptions[0] != "volatile" {
				t.Fatalf("got %+v", c)
			}
			if c.Address != DefaultAddress || c.Log.Format != "text" {
				t.Fatalf("unset keys lost their defaults: %+v", c)
			}
		}},
		{name: "unknown top-level key", text: "roots = \"/x\"\n", wantErr: "unknown key roots"},
		{name: "unknown nested key", text: "[metrics]\nadress = \"x\"\n", wantErr: "unknown key metrics.adress"},
		{name: "unknown table", text: "[straeming]\nplatforms = []\n", wantErr: "straeming"},
		{name: "bad platform", text: "[streaming]\nplatforms = [\"linux/\"]\n", wantErr: "streaming.platforms"},
		{name: "bad trust", text: "[streaming]\ntrust = \"anyone\"\n", wantErr: "streaming.trust"},
		{name: "bad read timeout", text: "[streaming]\nread_timeout = \"30\"\n", wantErr: "streaming.read_timeout"},
		{name: "bad prepare timeout", text: "[streaming]\nprepare_timeout = \"0s\"\n", wantErr: "streaming.prepare_timeout"},
		{name: "bad unhealthy_for", text: "[streaming]\nunhealthy_for = \"soon\"\n", wantErr: "streaming.unhealthy_for"},
		{name: "bad background retry max", text: "[streaming]\nbackground_retry_max = \"-1s\"\n", wantErr: "streaming.background_retry_max"},
		{name: "bad cache size", text: "[cache]\nmax_size = \"lots\"\n", wantErr: "cache.max_size"},
		{name: "relative hosts dir", text: "[streaming]\nhosts_dir = \"certs.d\"\n", wantErr: "streaming.hosts_dir"},
		{name: "wrong type", text: "[snapshotter]\nasync_remove = 1\n", wantErr: "snapshotter.async_remove"},
		{name: "syntax error", text: "root = \n", wantErr: "line 1"},
		{name: "empty root", text: "root = \"\"\n", wantErr: "root: must be an absolute"},
		{name: "relative root", text: "root = \"var/lib/rill\"\n", wantErr: "root: must be an absolute"},
		{name: "relative address", text: "address = \"rill.sock\"\n", wantErr: "address: must be an absolute"},
		{name: "bad log level", text: "[log]\nlevel = \"verbose\"\n", wantErr: "log.level"},
		{name: "bad log format", text: "[log]\nformat = \"xml\"\n", wantErr: "log.format"},
		{name: "bad metrics address", text: "[metrics]\naddress = \"9099\"\n", wantErr: "metrics.address"},
		{name: "cri proxy beside the socket by default", text: "address = \"/run/x/rill.sock\"\n", check: func(t *testing.T, c Config) {
			if c.CRISocket() != "/run/x/cri.sock" || c.Credentials.ContainerdAddress != DefaultContainerdAddress {
				t.Fatalf("CRI socket %q, containerd %q", c.CRISocket(), c.Credentials.ContainerdAddress)
			}
		}},
		{name: "cri proxy off", text: "[credentials]\ncri_address = \"none\"\n", check: func(t *testing.T, c Config) {
			if c.CRISocket() != "" {
				t.Fatalf("CRI socket %q, want off", c.CRISocket())
			}
		}},
		{name: "cri proxy on the snapshots socket", text: "[credentials]\ncri_address = \"/run/rill/rill.sock\"\n", wantErr: "credentials.cri_address"},
		{name: "relative cri proxy", text: "[credentials]\ncri_address = \"cri.sock\"\n", wantErr: "credentials.cri_address"},
		{name: "no containerd socket", text: "[credentials]\ncontainerd_address = \"\"\n", wantErr: "credentials.containerd_address"},
		{name: "provider config without bin dir", text: "[credentials]\nprovider_config = \"/etc/kubernetes/cp.yaml\"\n", wantErr: "credentials.provider_bin_dir"},
		{name: "relative provider config", text: "[credentials]\nprovider_config = \"cp.yaml\"\nprovider_bin_dir = \"/bin\"\n", wantErr: "credentials.provider_config"},
		{name: "profile reports", text: "[profile_reports]\nurl = \"http://watch:8900\"\nnode_name = \"n1\"\n", check: func(t *testing.T, c Config) {
			if c.ProfileReports.URL != "http://watch:8900" || c.ProfileReports.Node() != "n1" || c.ProfileReports.TokenFile != "/etc/rill/profile-token" {
				t.Fatalf("got %+v", c.ProfileReports)
			}
		}},
		{name: "profile reports: not a URL", text: "[profile_reports]\nurl = \"watch:8900\"\n", wantErr: "profile_reports.url"},
		{name: "profile reports: relative token file", text: "[profile_reports]\nurl = \"http://watch:8900\"\ntoken_file = \"token\"\n", wantErr: "profile_reports.token_file"},
		{name: "profile reports without recording", text: "[streaming]\nrecord_window = \"0s\"\n[profile_reports]\nurl = \"http://watch:8900\"\n", wantErr: "record_window"},
		{name: "fdstore defaults", text: "", check: func(t *testing.T, c Config) {
			if c.FDStore.Mode != "auto" || c.FDStore.HolderSocket != "/run/rill/fdstore.sock" {
				t.Fatalf("got %+v", c.FDStore)
			}
		}},
		{name: "fdstore holder elsewhere", text: "[fdstore]\nmode = \"holder\"\nholder_socket = \"/tmp/x/fd.sock\"\n", check: func(t *testing.T, c Config) {
			if c.FDStore.Mode != "holder" || c.FDStore.HolderSocket != "/tmp/x/fd.sock" {
				t.Fatalf("got %+v", c.FDStore)
			}
		}},
		{name: "fdstore off", text: "[fdstore]\nmode = \"off\"\n", check: func(t *testing.T, c Config) {
			if c.FDStore.Mode != "off" {
				t.Fatalf("got %+v", c.FDStore)
			}
		}},
		{name: "bad fdstore mode", text: "[fdstore]\nmode = \"always\"\n", wantErr: "fdstore.mode: \"always\" is not one of auto, systemd, holder, off"},
		{name: "empty fdstore mode", text: "[fdstore]\nmode = \"\"\n", wantErr: "fdstore.mode"},
		{name: "relative holder socket", text: "[fdstore]\nholder_socket = \"fd.sock\"\n", wantErr: "fdstore.holder_socket"},
		{name: "empty holder socket", text: "[fdstore]\nholder_socket = \"\"\n", wantErr: "fdstore.holder_socket"},
		{name: "holder socket on the snapshots socket", text: "[fdstore]\nholder_socket = \"/run/rill/rill.sock\"\n", wantErr: "fdstore.holder_socket"},
		{name: "mount option owned by the snapshotter", text: "[snapshotter]\nmount_options = [\"upperdir=/x\"]\n", wantErr: "snapshotter.mount_options"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(c.text))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, cfg)
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "absent.toml")
	if cfg, err := Load(missing, true); err != nil || !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("missing default file: %+v, %v", cfg, err)
	}
	if _, err := Load(missing, false); err == nil || !strings.Contains(err.Error(), "absent.toml") {
		t.Fatalf("missing named file: %v", err)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[log]\nlevel = \"loud\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad, true); err == nil || !strings.Contains(err.Error(), "bad.toml") || !strings.Contains(err.Error(), "log.level") {
		t.Fatalf("invalid file: error %v should name the file and the key", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("root = \"/var/lib/rill\"\n[log]\nlevel = \"info\"\n"))
	f.Add([]byte("[snapshotter]\nmount_options = [\"a\", \"b=c\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config that does not validate: %v", verr)
			}
		}
	})
}
