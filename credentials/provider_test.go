package credentials

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/remote"
)

func TestParseProviderConfig(t *testing.T) {
	good := `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages:
      - "*.dkr.ecr.*.amazonaws.com"
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials]
    env:
      - name: AWS_PROFILE
        value: example
`
	c, err := ParseProviderConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Providers[0]
	if p.Name != "ecr-credential-provider" || p.defaultCache != 12*time.Hour || len(p.Args) != 1 || p.Env[0].Name != "AWS_PROFILE" || p.Env[0].Value != "example" {
		t.Fatalf("parsed %+v", p)
	}
	if _, err := ParseProviderConfig([]byte(`{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[{"name":"p","matchImages":["x.io"],"defaultCacheDuration":"1m","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}`)); err != nil {
		t.Fatalf("JSON config: %v", err)
	}
	for _, tc := range []struct{ name, edit, want string }{
		{"kind", "kind: Other", "kind"},
		{"config version", "apiVersion: kubelet.config.k8s.io/v9", "apiVersion"},
		{"protocol version", "apiVersion: credentialprovider.kubelet.k8s.io/v9", "apiVersion"},
		{"no cache duration", `defaultCacheDuration: "12h"`, "defaultCacheDuration"},
		{"bad cache duration", `defaultCacheDuration: "soon"`, "defaultCacheDuration"},
		{"path as name", "name: ../../bin/sh", "not a file name"},
		{"no matchImages", `- "*.dkr.ecr.*.amazonaws.com"`, "matchImages"},
		{"not YAML", "providers: [", "credential provider config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := good
			switch tc.name {
			case "kind", "config version":
				text = strings.Replace(strings.Replace(good, "kind: CredentialProviderConfig", "", 1), "apiVersion: kubelet.config.k8s.io/v1", "", 1)
				if tc.name == "kind" {
					text = "apiVersion: kubelet.config.k8s.io/v1\n" + tc.edit + text
				} else {
					text = "kind: CredentialProviderConfig\n" + tc.edit + text
				}
			case "protocol version":
				text = strings.Replace(good, "apiVersion: credentialprovider.kubelet.k8s.io/v1", tc.edit, 1)
			case "no cache duration", "no matchImages":
				text = strings.Replace(good, tc.edit, "", 1)
			case "bad cache duration":
				text = strings.Replace(good, `defaultCacheDuration: "12h"`, tc.edit, 1)
			case "path as name":
				text = strings.Replace(good, "name: ecr-credential-provider", tc.edit, 1)
			case "not YAML":
				text = tc.edit
			}
			_, err := ParseProviderConfig([]byte(text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func FuzzParseProviderConfig(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[{"name":"p","matchImages":["x.io"],"defaultCacheDuration":"1m","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = ParseProviderConfig(data)
	})
}

func FuzzParseProviderResponse(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","auth":{"x.io":{"username":"u","password":"p"}}}`))
	pr := &Provider{Name: "p", APIVersion: "credentialprovider.kubelet.k8s.io/v1"}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = parseProviderResponse(data, pr)
	})
}

// pluginFixture is a provider whose plugin is this test binary (see TestMain).
type pluginFixture struct {
	dir, requestFile, responseFile string
	providers                      *Providers
}

func newPlugin(t *testing.T, matchImages []string, defaultCache string, extraEnv ...string) *pluginFixture {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(bin, "test-plugin")); err != nil {
		t.Fatal(err)
	}
	f := &pluginFixture{dir: dir, requestFile: filepath.Join(dir, "request.json"), responseFile: filepath.Join(dir, "response.json")}
	env := []map[string]string{
		{"name": "RILL_TEST_PLUGIN", "value": "1"},
		{"name": "PLUGIN_REQUEST_FILE", "value": f.requestFile},
		{"name": "PLUGIN_RESPONSE_FILE", "value": f.responseFile},
	}
	for i := 0; i+1 < len(extraEnv); i += 2 {
		env = append(env, map[string]string{"name": extraEnv[i], "value": extraEnv[i+1]})
	}
	cfg, _ := json.Marshal(map[string]any{
		"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
		"providers": []map[string]any{{
			"name": "test-plugin", "matchImages": matchImages, "defaultCacheDuration": defaultCache,
			"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "env": env,
		}},
	})
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	f.providers, err = LoadProviders(context.Background(), path, bin)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *pluginFixture) respond(t *testing.T, cacheKeyType string, cacheDuration *string, auth map[string]providerAuth) {
	t.Helper()
	b, _ := json.Marshal(providerResponse{APIVersion: "credentialprovider.kubelet.k8s.io/v1", Kind: "CredentialProviderResponse", CacheKeyType: cacheKeyType, CacheDuration: cacheDuration, Auth: auth})
	if err := os.WriteFile(f.responseFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *pluginFixture) runs(t *testing.T) (n int, image string) {
	t.Helper()
	b, err := os.ReadFile(f.requestFile)
	if os.IsNotExist(err) {
		return 0, ""
	}
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.requestFile)
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var req map[string]any
		if err := json.Unmarshal([]byte(line), &req); err != nil {
			t.Fatalf("plugin request %s: %v", line, err)
		}
		if req["apiVersion"] != "credentialprovider.kubelet.k8s.io/v1" || req["kind"] != "CredentialProviderRequest" || len(req) != 3 {
			t.Fatalf("plugin request %s is not a v1 CredentialProviderRequest", line)
		}
		n, image = n+1, req["image"].(string)
	}
	return n, image
}

func lookup(t *testing.T, s Source, sc Scope) []remote.Credential {
	t.Helper()
	cands, err := s.Lookup(context.Background(), sc)
	if err != nil {
		t.Fatal(err)
	}
	var out []remote.Credential
	for _, c := range cands {
		out = append(out, c.Credential)
	}
	return out
}

func TestProviderProtocolAndCache(t *testing.T) {
	app := Scope{Host: "reg.example.com:5000", Repository: "team/app"}
	other := Scope{Host: "reg.example.com:5000", Repository: "team/other"}
	t.Run("answers, most specific first, cached per registry", func(t *testing.T) {
		f := newPlugin(t, []string{"*.example.com:5000"}, "1h")
		f.respond(t, cacheKeyRegistry, nil, map[string]providerAuth{
			"reg.example.com:5000":          {Username: "host", Password: "pw-host"},
			"reg.example.com:5000/team/app": {Username: "repo", Password: "pw-repo"},
			"elsewhere.io":                  {Username: "no", Password: "no"},
		})
		got := lookup(t, f.providers, app)
		want := []remote.Credential{{Username: "repo", Secret: "pw-repo"}, {Username: "host", Secret: "pw-host"}}
		if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
			t.Fatalf("credentials %v, want the repository's then the host's", len(got))
		}
		if n, image := f.runs(t); n != 1 || image != "reg.example.com:5000/team/app" {
			t.Fatalf("plugin ran %d times for %q", n, image)
		}
		// Registry key: another repository of the host is answered from the cache.
		if got := lookup(t, f.providers, other); len(got) != 1 || got[0].Username != "host" {
			t.Fatalf("other repository: %v", got)
		}
		if n, _ := f.runs(t); n != 0 {
			t.Fatal("plugin ran again within its cache duration")
		}
		// A refused credential drops the cached answer: the plugin is asked again.
		f.providers.Refused(context.Background(), app, remote.Credential{Username: "repo", Secret: "pw-repo"})
		lookup(t, f.providers, app)
		if n, _ := f.runs(t); n != 1 {
			t.Fatal("plugin not asked again after its credential was refused")
		}
	})
	t.Run("cache key Image and expiry", func(t *testing.T) {
		f := newPlugin(t, []string{"reg.example.com:5000"}, "1h")
		zero := "0s"
		f.respond(t, cacheKeyImage, &zero, map[string]providerAuth{"reg.example.com:5000": {Username: "u", Password: "p"}})
		lookup(t, f.providers, app)
		lookup(t, f.providers, app)
		if n, _ := f.runs(t); n != 2 {
			t.Fatalf("plugin ran %d times for two lookups with cacheDuration 0s, want 2", n)
		}
		ten := "10m"
		f.respond(t, cacheKeyImage, &ten, map[string]providerAuth{"reg.example.com:5000": {Username: "u", Password: "p"}})
		now := time.Now()
		f.providers.now = func() time.Time { return now }
		lookup(t, f.providers, app)
		f.runs(t)
		lookup(t, f.providers, app)
		if n, _ := f.runs(t); n != 0 {
			t.Fatal("plugin ran again for a cached image")
		}
		lookup(t, f.providers, other) // Image key: another repository is not cached
		if n, _ := f.runs(t); n != 1 {
			t.Fatal("another image was answered from an Image-keyed cache")
		}
		now = now.Add(11 * time.Minute)
		lookup(t, f.providers, app)
		if n, _ := f.runs(t); n != 1 {
			t.Fatal("plugin not asked again after the cache duration")
		}
	})
	t.Run("images outside matchImages are not asked about", func(t *testing.T) {
		f := newPlugin(t, []string{"*.azurecr.io"}, "1h")
		f.respond(t, cacheKeyGlobal, nil, map[string]providerAuth{"*.azurecr.io": {Username: "u", Password: "p"}})
		if got := lookup(t, f.providers, app); len(got) != 0 {
			t.Fatalf("credentials for an image the plugin does not match: %v", got)
		}
		if n, _ := f.runs(t); n != 0 {
			t.Fatal("plugin ran for an image outside matchImages")
		}
	})
	t.Run("a failing or lying plugin gives nothing", func(t *testing.T) {
		f := newPlugin(t, []string{"*.example.com:5000"}, "1h", "PLUGIN_FAIL", "1")
		if got := lookup(t, f.providers, app); len(got) != 0 {
			t.Fatalf("failing plugin: %v", got)
		}
		g := newPlugin(t, []string{"*.example.com:5000"}, "1h")
		if err := os.WriteFile(g.responseFile, []byte(`{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","auth":{"reg.example.com:5000":{"username":"u","password":"p"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := lookup(t, g.providers, app); len(got) != 0 {
			t.Fatalf("answer of another apiVersion accepted: %v", got)
		}
	})
}

func TestLoadProvidersChecksThePlugins(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(`{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[{"name":"missing","matchImages":["x.io"],"defaultCacheDuration":"1m","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}`), 0o600)
	if _, err := LoadProviders(context.Background(), cfg, dir); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing plugin: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "missing"), []byte("#!/bin/sh\n"), 0o644)
	if _, err := LoadProviders(context.Background(), cfg, dir); err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Fatalf("plugin without exec bit: %v", err)
	}
}
