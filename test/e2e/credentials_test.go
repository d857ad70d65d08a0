package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/test/harness"
	"golang.org/x/crypto/bcrypt"
)

const (
	privateUser   = "alice"
	firstPassword = "first-PASSWORD-1x"
	newPassword   = "second-PASSWORD-2y"
	thirdPassword = "third-PASSWORD-3z"
	// providerName is the test's kubelet credential provider plugin (test/cmd/credential-provider).
	providerName = "rill-test-credential-provider"
)

// privateFiles are the files of the private image, each read by one step of the test only:
// large enough (2 MiB of incompressible bytes) that reading one never brings the next along.
var privateFiles = []string{"a", "b", "c", "d"}

// TestPrivateImages pulls an eStargz image from a registry with htpasswd authentication through
// rill's CRI proxy, as kubelet would with a pod's imagePullSecrets (crictl pull --creds and
// --auth), and checks that the image streams and rill's reads of it authenticate: with the
// credentials CRI passed; after a restart of rill, with those it kept on disk; once the
// registry stops accepting the old password, with those of a kubelet credential provider plugin
// (and not before the plugin has them); with the credentials of a later pull. The credentials
// are never logged and leave rill's disk with the image.
func TestPrivateImages(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	writeHtpasswd(t, htpasswd, firstPassword)
	reg, err := harness.StartRegistryHtpasswd(ctx, filepath.Join(dir, "registry"), htpasswd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Stop(context.Background()) })
	env := startEnvWith(t, harness.Options{
		Logf: t.Logf, RegistryHosts: []string{reg.Host()},
		// Reads of a file fetch it then, not a background fetch before.
		SnapshotterStreaming: []string{"background_fetch = false"},
	})

	// The plugin answers with the "user:password" in credsFile (nothing while it is empty).
	credsFile, pluginLog := filepath.Join(dir, "provider-credentials"), filepath.Join(dir, "provider.log")
	providerCfg, binDir := writeProvider(t, env, dir, reg.Host(), credsFile, pluginLog)
	if err := env.Snapshotter.SetCredentials(
		fmt.Sprintf("containerd_address = %q", env.Containerd.Socket()),
		fmt.Sprintf("provider_config = %q", providerCfg),
		fmt.Sprintf("provider_bin_dir = %q", binDir),
	); err != nil {
		t.Fatal(err)
	}
	restartSnapshotter(t, env)

	img, contents := pushPrivate(t, env, reg.Host()+"/private/app:v1")
	proxy := "unix://" + env.Snapshotter.CRISocket()
	podConfig := filepath.Join(dir, "pod.json")
	writeJSONFile(t, podConfig, map[string]any{"metadata": map[string]any{"name": "web", "namespace": "shop", "uid": "u1"}})

	// Without credentials the registry refuses the pull.
	if _, err := env.CRI.Run(ctx, "--image-endpoint", proxy, "pull", img.Ref); err == nil {
		t.Fatal("pulling the private image without credentials succeeded")
	}
	if _, err := env.CRI.Run(ctx, "--image-endpoint", proxy, "pull", "--creds", privateUser+":"+firstPassword, "--pod-config", podConfig, img.Ref); err != nil {
		t.Fatalf("crictl pull --creds through rill's CRI proxy: %v", err)
	}
	assertStreamed(t, env, img, "estargz")
	if log := grepLog(t, env, "pull credentials captured"); !strings.Contains(log, "pod=shop/web") || !strings.Contains(log, reg.Host()+"/private/app") {
		t.Errorf("rill did not log the captured credentials with the pod and repository:\n%s", log)
	}
	assertCredentialFiles(t, env, 1)

	read := func(step, file string) (*harness.ContainerResult, error) {
		t.Helper()
		return env.CRI.RunInPod(ctx, "private-"+step, img.Ref, []string{"/checker", "/data/" + file}, 2*time.Minute)
	}
	mustRead := func(step, file string) {
		t.Helper()
		res, err := read(step, file)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, "sha256="+contents[file]) {
			t.Fatalf("%s: reading /data/%s: exit %d, stdout %q, stderr %q; rill's log:\n%s", step, file, res.ExitCode, res.Stdout, res.Stderr, grepLog(t, env, "credentials"))
		}
	}
	mustRead("captured", "a")

	// A restart: the credentials kept on disk serve the reads (the plugin has none).
	restartSnapshotter(t, env)
	mustRead("after-restart", "b")

	// The registry stops accepting the old password: reads fail until a source has the new
	// one, here the credential provider plugin.
	writeHtpasswd(t, htpasswd, newPassword)
	if res, err := read("expired", "c"); err == nil && res.ExitCode == 0 {
		t.Fatal("a read with the refused password and no other source succeeded")
	}
	if err := os.WriteFile(credsFile, []byte(privateUser+":"+newPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRead("provider", "c")
	if log := grepLog(t, env, "registry refused the credentials"); log == "" {
		t.Error("rill did not log that the registry refused the old credentials")
	}
	if asked := readFile(pluginLog); !strings.Contains(asked, reg.Host()+"/private/app") {
		t.Errorf("the plugin was asked about %q, want the image's repository", asked)
	}

	// The password changes again, the plugin has nothing: a later pull with --auth brings
	// fresh credentials from CRI, and they serve the reads.
	if err := os.WriteFile(credsFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	writeHtpasswd(t, htpasswd, thirdPassword)
	auth := base64.StdEncoding.EncodeToString([]byte(privateUser + ":" + thirdPassword))
	if _, err := env.CRI.Run(ctx, "--image-endpoint", proxy, "pull", "--auth", auth, img.Ref); err != nil {
		t.Fatalf("crictl pull --auth through rill's CRI proxy: %v", err)
	}
	mustRead("fresh-cri", "d")

	logData, err := os.ReadFile(env.Snapshotter.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{firstPassword, newPassword, thirdPassword, auth, base64.StdEncoding.EncodeToString([]byte(privateUser + ":" + firstPassword))} {
		if strings.Contains(string(logData), secret) {
			t.Errorf("rill's log shows a secret (%.6s...)", secret)
		}
	}

	// Removing the image removes its credentials from rill's disk.
	if err := env.CRI.RemoveImage(ctx, img.Ref); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for credentialFiles(t, env) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("credential files left a minute after the image was removed: %d", credentialFiles(t, env))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startEnvWith is startEnv with options.
func startEnvWith(t *testing.T, opts harness.Options) *harness.Env {
	t.Helper()
	env, err := harness.Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("starting the test environment: %v", err)
	}
	t.Cleanup(func() {
		processes := env.Processes()
		if err := env.Close(context.Background(), t.Failed()); err != nil {
			t.Errorf("stopping the test environment: %v", err)
		}
		for _, p := range processes {
			if p.Alive() {
				t.Errorf("%s (pid %d) still runs after the environment was closed", p.Name(), p.PID())
			}
		}
	})
	return env
}

func restartSnapshotter(t *testing.T, env *harness.Env) {
	t.Helper()
	if err := env.Snapshotter.Stop(t.Context()); err != nil {
		t.Fatalf("stopping rill-snapshotter: %v", err)
	}
	if err := env.StartSnapshotter(t.Context()); err != nil {
		t.Fatalf("starting rill-snapshotter: %v", err)
	}
}

// writeHtpasswd makes the registry's htpasswd file hold alice with password (bcrypt), with a
// modification time the registry sees as a change.
func writeHtpasswd(t *testing.T, path, password string) {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(privateUser+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		t.Fatal(err)
	}
}

// writeProvider builds the test plugin into a bin directory and writes kubelet's
// CredentialProviderConfig for it, matching the registry's host.
func writeProvider(t *testing.T, env *harness.Env, dir, host, credsFile, logFile string) (config, binDir string) {
	t.Helper()
	binDir = filepath.Join(dir, "provider-bin")
	if err := harness.BuildGo(t.Context(), env.RepoRoot, "./test/cmd/credential-provider", filepath.Join(binDir, providerName), false); err != nil {
		t.Fatal(err)
	}
	config = filepath.Join(dir, "credential-provider-config.yaml")
	yaml := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: %s
    matchImages: [%q]
    defaultCacheDuration: "10m"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - {name: CREDENTIAL_PROVIDER_FILE, value: %q}
      - {name: CREDENTIAL_PROVIDER_LOG, value: %q}
`, providerName, host, credsFile, logFile)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return config, binDir
}

// pushPrivate pushes, with the first password, an eStargz image holding the checker and
// privateFiles under /data; it returns the image and each file's sha256.
func pushPrivate(t *testing.T, env *harness.Env, ref string) (*harness.PushedImage, map[string]string) {
	t.Helper()
	ctx := t.Context()
	dir := t.TempDir()
	checker := filepath.Join(dir, "checker")
	if err := harness.BuildGo(ctx, env.RepoRoot, "./test/cmd/checker", checker, true); err != nil {
		t.Fatal(err)
	}
	w, err := harness.NewLayerWriter(filepath.Join(dir, "layer.tar.gz"), gzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(checker)
	if err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 0)
	if err := w.Add(&tar.Header{Typeflag: tar.TypeReg, Name: "checker", Mode: 0o755, Size: int64(len(bin)), ModTime: mtime}, strings.NewReader(string(bin))); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(&tar.Header{Typeflag: tar.TypeDir, Name: "data/", Mode: 0o755, ModTime: mtime}, nil); err != nil {
		t.Fatal(err)
	}
	contents := map[string]string{}
	for i, name := range privateFiles {
		const size = 2 << 20
		data, err := io.ReadAll(io.LimitReader(rand.NewChaCha8([32]byte{byte(i + 1)}), size))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		contents[name] = hex.EncodeToString(sum[:])
		if err := w.Add(&tar.Header{Typeflag: tar.TypeReg, Name: "data/" + name, Mode: 0o644, Size: size, ModTime: mtime}, strings.NewReader(string(data))); err != nil {
			t.Fatal(err)
		}
	}
	layer, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	esgz := toEStargz(t, layer, filepath.Join(dir, "layer.esgz"))
	auth := ggcrremote.WithAuth(&authn.Basic{Username: privateUser, Password: firstPassword})
	pushed, err := harness.Push(ctx, ref, harness.ImageSpec{Layers: []*harness.Layer{esgz}}, auth)
	if err != nil {
		t.Fatal(err)
	}
	return pushed, contents
}

// toEStargz converts a layer to a third-party eStargz layer (its TOC digest annotated).
func toEStargz(t *testing.T, l *harness.Layer, path string) *harness.Layer {
	t.Helper()
	src, err := os.Open(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	conv, err := convert.ConvertLayer(t.Context(), src, dst, convert.LayerOptions{})
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	digest, err := v1.NewHash(conv.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	diffID, err := v1.NewHash(conv.DiffID.String())
	if err != nil {
		t.Fatal(err)
	}
	return &harness.Layer{Path: path, Digest: digest, DiffID: diffID, Size: conv.Size, Annotations: map[string]string{
		artifact.AnnotationTOCDigest:        conv.TOCDigest.String(),
		artifact.AnnotationUncompressedSize: fmt.Sprint(conv.UncompressedSize),
	}}
}

func writeJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// credentialFiles counts the files of rill's credential store.
func credentialFiles(t *testing.T, env *harness.Env) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(env.Snapshotter.Root(), "credentials"))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// assertCredentialFiles checks that rill's credential store holds n files, that only root may
// read them (0600) and enter the store (0700).
func assertCredentialFiles(t *testing.T, env *harness.Env, n int) {
	t.Helper()
	dir := filepath.Join(env.Snapshotter.Root(), "credentials")
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("credential directory mode %v, want 0700", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != n {
		t.Fatalf("%d credential files, want %d", len(entries), n)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("credential file %s mode %v, want 0600", e.Name(), info.Mode().Perm())
		}
	}
}
