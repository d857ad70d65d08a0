package remote

import (
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":     0,
		"3":    3 * time.Second,
		"-1":   0,
		"soon": 0,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
	} {
		if got := retryAfter(in, now); got != want {
			t.Errorf("retryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestBackoffIsCappedAndJittered(t *testing.T) {
	r := testRegistry(t, WithRetry(10, 100*time.Millisecond, time.Second))
	for n := 0; n < 10; n++ {
		ceil := min(100*time.Millisecond<<n, time.Second)
		seen := map[time.Duration]bool{}
		for i := 0; i < 50; i++ {
			d := r.backoff(n)
			if d < ceil/2 || d >= ceil {
				t.Fatalf("backoff(%d) = %s, want in [%s, %s)", n, d, ceil/2, ceil)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Fatalf("backoff(%d) has no jitter", n)
		}
	}
}

func TestParseRef(t *testing.T) {
	for in, want := range map[string]repoRef{
		"alpine":                    {host: "docker.io", repo: "library/alpine"},
		"alpine:3.20":               {host: "docker.io", repo: "library/alpine", tag: "3.20"},
		"127.0.0.1:5000/app/img:v1": {host: "127.0.0.1:5000", repo: "app/img", tag: "v1"},
		"reg.example/app@" + dgA:    {host: "reg.example", repo: "app", digest: digest.Digest(dgA)},
	} {
		got, err := parseRef(in)
		if err != nil || got != want {
			t.Errorf("parseRef(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if _, err := parseRef("reg.example/App:v1"); err == nil {
		t.Error("invalid reference accepted")
	}
}

const dgA = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
