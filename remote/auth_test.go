package remote

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/sirupsen/logrus"
)

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// fakeHelper installs docker-credential-<name> on PATH, answering for host.
func fakeHelper(t *testing.T, name, host, user, secret string) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "docker-credential-"+name), `#!/bin/sh
read -r server
if [ "$1" = get ] && [ "$server" = "`+host+`" ]; then
  printf '{"ServerURL":"%s","Username":"`+user+`","Secret":"`+secret+`"}' "$server"
  exit 0
fi
echo "credentials not found in native keychain"
exit 1
`, 0o755)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

func TestDockerConfig(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	fakeHelper(t, "rilltest", "helped.example:5000", "helper-user", "helper-secret")
	fakeHelper(t, "rillstore", "https://index.docker.io/v1/", "<token>", "hub-refresh-token")
	for _, tc := range []struct {
		name, config, host string
		user, secret       string
	}{
		{"auth field", `{"auths":{"reg.example":{"auth":"` + b64("bob:pw1") + `"}}}`, "reg.example", "bob", "pw1"},
		{"url key", `{"auths":{"https://reg.example/v2/":{"auth":"` + b64("bob:pw2") + `"}}}`, "reg.example", "bob", "pw2"},
		{"username and password", `{"auths":{"reg.example":{"username":"u","password":"p"}}}`, "reg.example", "u", "p"},
		{"identity token", `{"auths":{"reg.example":{"identitytoken":"idtok"}}}`, "reg.example", "", "idtok"},
		{"other host", `{"auths":{"reg.example":{"username":"u","password":"p"}}}`, "elsewhere.example", "", ""},
		{"credHelpers", `{"credHelpers":{"helped.example:5000":"rilltest"},"auths":{"helped.example:5000":{"username":"no","password":"no"}}}`, "helped.example:5000", "helper-user", "helper-secret"},
		{"credsStore, Docker Hub key, identity token", `{"credsStore":"rillstore"}`, "registry-1.docker.io", "", "hub-refresh-token"},
		{"credsStore without the host", `{"credsStore":"rillstore"}`, "reg.example", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.json")
			writeFile(t, path, tc.config, 0o600)
			u, s, err := DockerConfig(path).Credentials(context.Background(), tc.host)
			if err != nil || u != tc.user || s != tc.secret {
				t.Fatalf("got %q, %q, %v; want %q, %q", u, s, err, tc.user, tc.secret)
			}
		})
	}
	t.Run("DOCKER_CONFIG and a missing file", func(t *testing.T) {
		dir := t.TempDir()
		t.Setenv("DOCKER_CONFIG", dir)
		if u, s, err := DockerConfig("").Credentials(context.Background(), "reg.example"); err != nil || u != "" || s != "" {
			t.Fatalf("missing config: %q, %q, %v; want anonymous", u, s, err)
		}
		writeFile(t, filepath.Join(dir, "config.json"), `{"auths":{"reg.example":{"username":"u","password":"p"}}}`, 0o600)
		if u, s, err := DockerConfig("").Credentials(context.Background(), "reg.example"); err != nil || u != "u" || s != "p" {
			t.Fatalf("written later: %q, %q, %v; want it read at use", u, s, err)
		}
	})
	t.Run("malformed file names no secret", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "config.json")
		writeFile(t, path, `{"auths":{"reg.example":{"auth":"not base64 TOPSECRET"}}}`, 0o600)
		_, _, err := DockerConfig(path).Credentials(context.Background(), "reg.example")
		if err == nil || strings.Contains(err.Error(), "TOPSECRET") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("chain", func(t *testing.T) {
		first := CredentialsFunc(func(context.Context, string) (string, string, error) { return "", "", nil })
		second := CredentialsFunc(func(context.Context, string) (string, string, error) { return "kube", "pass", nil })
		if u, s, _ := ChainCredentials(first, second).Credentials(context.Background(), "h"); u != "kube" || s != "pass" {
			t.Fatalf("chain: %q, %q", u, s)
		}
	})
}

// captureLogs returns a context whose logger (containerd's log.G, logrus) writes everything
// into the returned buffer.
func captureLogs(t testing.TB) (context.Context, *bytes.Buffer) {
	var buf bytes.Buffer
	l := logrus.New()
	l.SetOutput(&buf)
	l.SetLevel(logrus.TraceLevel)
	return log.WithLogger(testCtx(t), logrus.NewEntry(l)), &buf
}

func TestTokenAuth(t *testing.T) {
	const user, pass = "alice", "s3cret-PASSWORD-1"
	f := newBlobFixture(t, regtest.InProcess(t, true))
	cfg := filepath.Join(t.TempDir(), "config.json")
	writeConfig := func(pw string) {
		writeFile(t, cfg, `{"auths":{"`+f.proxy.Host+`":{"auth":"`+base64.StdEncoding.EncodeToString([]byte(user+":"+pw))+`"}}}`, 0o600)
	}
	writeConfig(pass)
	f.reg = testRegistry(t, WithCredentials(DockerConfig(cfg)))
	f.proxy.RequireToken(user, pass, 0)
	ctx, logs := captureLogs(t)
	br, err := f.reg.BlobReader(ctx, f.ref, f.desc)
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()

	timed(t, 5*time.Second, func() {
		if err := f.check(t, br, Range{0, 4096}); err != nil {
			t.Fatal(err)
		}
	})
	if n := f.proxy.TokensIssued(); n != 1 {
		t.Fatalf("%d tokens issued, want 1", n)
	}
	timed(t, 5*time.Second, func() {
		if err := f.check(t, br, Range{4096, 4096}); err != nil {
			t.Fatal(err)
		}
	})
	if n := f.proxy.TokensIssued(); n != 1 {
		t.Fatalf("token not reused: %d issued", n)
	}

	t.Run("expired token is renewed", func(t *testing.T) {
		f.proxy.ExpireTokens()
		timed(t, 3*time.Second, func() {
			if err := f.check(t, br, Range{8192, 4096}); err != nil {
				t.Fatal(err)
			}
		})
		if n := f.proxy.TokensIssued(); n != 2 {
			t.Fatalf("%d tokens issued, want a second one after expiry", n)
		}
	})
	t.Run("expired token, challenge without error", func(t *testing.T) {
		// Without error="invalid_token" containerd's authorizer would reuse the rejected
		// token; the 401 must still lead to a new one.
		f.proxy.PlainChallenges()
		f.proxy.ExpireTokens()
		before := f.proxy.TokensIssued()
		timed(t, 3*time.Second, func() {
			if err := f.check(t, br, Range{100, 4096}); err != nil {
				t.Fatal(err)
			}
		})
		if n := f.proxy.TokensIssued(); n != before+1 {
			t.Fatalf("%d tokens issued, want one more", n-before)
		}
	})
	t.Run("rotated credentials are read at use", func(t *testing.T) {
		writeConfig("rotated-PASSWORD-2")
		f.proxy.RequireToken(user, "rotated-PASSWORD-2", 0)
		timed(t, 5*time.Second, func() {
			if err := f.check(t, br, Range{0, 10}); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("wrong credentials fail clearly, without secrets", func(t *testing.T) {
		writeConfig("wrong-PASSWORD-3")
		f.proxy.ExpireTokens()
		var err error
		timed(t, 3*time.Second, func() { _, err = br.ReadAtContext(ctx, make([]byte, 10), 0) })
		if err == nil {
			t.Fatal("read with wrong credentials succeeded")
		}
		for _, secret := range []string{"PASSWORD", base64.StdEncoding.EncodeToString([]byte(user + ":wrong"))[:12]} {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error shows a secret: %v", err)
			}
		}
		if !strings.Contains(err.Error(), "401") {
			t.Fatalf("error %v does not say the registry refused the credentials", err)
		}
	})
	for _, secret := range []string{"PASSWORD", "Bearer ", "Basic ", base64.RawURLEncoding.EncodeToString([]byte("token-1"))} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("logs show %q:\n%s", secret, logs.String())
		}
	}
}

func TestAnonymousToken(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true))
	f.proxy.RequireToken("", "", 60)
	br := f.reader(t)
	if err := f.check(t, br, Range{0, 100}); err != nil {
		t.Fatal(err)
	}
	if f.proxy.TokensIssued() != 1 {
		t.Fatal("no anonymous token fetched")
	}
}

func TestRedirectSignatureNotInErrors(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true), WithRetry(2, time.Millisecond, time.Millisecond))
	f.proxy.RedirectBlobs()
	ctx, logs := captureLogs(t)
	br, err := f.reg.BlobReader(ctx, f.ref, f.desc)
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	if err := f.check(t, br, Range{0, 10}); err != nil {
		t.Fatal(err)
	}
	f.proxy.Add(faultproxy503Storage())
	_, err = br.ReadAtContext(ctx, make([]byte, 10), 100)
	if err == nil {
		t.Fatal("read succeeded through a failing storage and registry")
	}
	if strings.Contains(err.Error(), "X-Signature") || strings.Contains(logs.String(), "X-Signature") {
		t.Fatalf("signed URL query leaked: %v\n%s", err, logs.String())
	}
}

func TestBasicAuth(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, true))
	creds := CredentialsFunc(func(_ context.Context, host string) (string, string, error) {
		if host == f.proxy.Host {
			return "bob", "basic-PASSWORD", nil
		}
		return "", "", nil
	})
	f.reg = testRegistry(t, WithCredentials(creds))
	f.proxy.RequireBasic("bob", "basic-PASSWORD")
	if err := f.check(t, f.reader(t), Range{0, 100}); err != nil {
		t.Fatal(err)
	}
	f.proxy.RequireBasic("bob", "changed")
	_, err := f.reader(t).ReadAt(make([]byte, 10), 0)
	if err == nil || strings.Contains(err.Error(), "PASSWORD") || strings.Contains(err.Error(), "changed") {
		t.Fatalf("wrong basic credentials: %v", err)
	}
	if !errdefs.IsUnauthorized(err) {
		t.Fatalf("wrong basic credentials: %v, want Unauthenticated", err)
	}
}
