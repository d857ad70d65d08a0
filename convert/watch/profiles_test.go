package watch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/internal/regtest"
	"github.com/rillstream/rill/convert/operation"
)

func TestMergeProfiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   [][]string
		want []string
	}{
		{"one node", [][]string{{"b", "a", "c"}}, []string{"b", "a", "c"}},
		{"two nodes keep every file", [][]string{{"a", "b", "x"}, {"b", "a", "y"}}, []string{"a", "b", "x", "y"}},
		{"median rank", [][]string{{"a", "b", "c"}, {"c", "a", "b"}, {"b", "c", "a"}}, []string{"a", "b", "c"}},
		{"one of many dropped", [][]string{{"a", "odd", "b"}, {"a", "b"}, {"a", "b"}}, []string{"a", "b"}},
		{"median of four", [][]string{{"a", "b"}, {"b", "a"}, {"b", "a"}, {"b", "a"}}, []string{"b", "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := MergeProfiles(tc.in); !slices.Equal(got, tc.want) {
				t.Errorf("MergeProfiles(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestProfileDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b []string
		want float64
	}{
		{nil, nil, 0},
		{nil, []string{"a"}, 1},
		{[]string{"a", "b"}, []string{"b", "a"}, 0},
		{[]string{"a", "b", "c"}, []string{"a", "b", "d"}, 0.5},
		{[]string{"a"}, []string{"b"}, 1},
	} {
		if got := ProfileDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("ProfileDistance(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestKeepFiles(t *testing.T) {
	files := map[string]int64{"a": 10, "big": 100, "b": 5}
	if got := KeepFiles([]string{"a", "outside", "big", "b"}, files, 50); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("KeepFiles = %v, want [a b]: no path outside the image, none past the byte budget", got)
	}
}

// Nodes report the profiles they recorded for a bound artifact; once two have, the watcher
// gives the tag an artifact with their merged profile (an operation), keeps the old artifact,
// and does not rebuild again when the nodes of the new artifact report the same profile.
func TestFleetProfile(t *testing.T) {
	const token = "node-secret"
	f := newFixtureWith(t, "referrers-api", func(c *Config) {
		c.Profiles = ProfileConfig{Token: token, MinReports: 2, Delay: time.Hour}
	})
	ctx := regtest.Ctx(t)
	ref := f.host + "/app:v1"
	regtest.PushImage(t, f.reg, ref, "one")
	res, err := f.w.tags.Create(ctx, ref, convert.CreateOptions{Bind: true})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Artifacts[0].Artifact.Digest
	f.run(t)
	srv := httptest.NewServer(f.w.ProfileHandler())
	t.Cleanup(srv.Close)
	post := func(tok string, body []byte) (int, ProfileReply) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL+artifact.ProfileReportPath, bytes.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var reply ProfileReply
		json.NewDecoder(resp.Body).Decode(&reply)
		return resp.StatusCode, reply
	}
	report := func(node string, art digest.Digest, paths ...string) []byte {
		b, _ := json.Marshal(artifact.ProfileReport{Artifact: art, Image: ref, Node: node, WindowSeconds: 5, Paths: paths})
		return b
	}

	// Refused: no token, a wrong one, a body too large, paths outside the image, an unknown
	// artifact, a million paths.
	if code, _ := post("", report("a", s, "etc/content")); code != http.StatusUnauthorized {
		t.Errorf("without a token: %d", code)
	}
	if code, _ := post("wrong", report("a", s, "etc/content")); code != http.StatusUnauthorized {
		t.Errorf("with a wrong token: %d", code)
	}
	if code, _ := post(token, append(report("a", s, "etc/content"), bytes.Repeat([]byte(" "), artifact.MaxProfileReportSize)...)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over the limit: %d", code)
	}
	if code, _ := post(token, report("a", s, "etc/passwd", "../../etc/shadow")); code != http.StatusBadRequest {
		t.Errorf("paths outside the image: %d", code)
	}
	if code, _ := post(token, report("a", digest.FromString("no such artifact"), "etc/content")); code != http.StatusNotFound {
		t.Errorf("an unknown artifact: %d", code)
	}
	many := make([]string, artifact.MaxProfilePaths+1)
	for i := range many {
		many[i] = fmt.Sprint("f", i)
	}
	if code, _ := post(token, report("a", s, many...)); code != http.StatusBadRequest && code != http.StatusRequestEntityTooLarge {
		t.Errorf("too many paths: %d", code)
	}
	if ops := f.ops(t); len(ops) != 0 {
		t.Fatalf("refused reports queued operations: %+v", ops)
	}

	code, reply := post(token, report("node-a", s, "etc/content", "etc/missing"))
	if code != http.StatusAccepted || reply.Accepted != 1 || reply.Dropped != 1 || reply.Reports != 1 {
		t.Fatalf("node A's report: %d %+v", code, reply)
	}
	if ops := f.ops(t); len(ops) != 0 {
		t.Fatalf("one report of two needed queued %+v", ops)
	}
	if code, reply = post(token, report("node-b", s, "/etc/content")); code != http.StatusAccepted || reply.Reports != 2 {
		t.Fatalf("node B's report: %d %+v", code, reply)
	}
	ops := f.waitDone(t)
	if len(ops) != 1 || ops[0].Trigger != "fleet profile" || ops[0].State != operation.Succeeded {
		t.Fatalf("after two reports: %+v", ops)
	}
	st := f.show(t, ctx, ref)
	as := st.Manifests[0].Artifacts
	if len(as) != 2 || !as[0].Bound || as[0].ProfileEntries != 1 || as[0].Descriptor.Digest == s || as[1].Descriptor.Digest != s {
		t.Fatalf("after the fleet profile rill show lists %+v", as)
	}
	s2 := as[0].Descriptor.Digest

	// The nodes of the new artifact record the same start: no rebuild.
	for _, node := range []string{"node-a", "node-b", "node-c"} {
		if code, _ := post(token, report(node, s2, "etc/content")); code != http.StatusAccepted {
			t.Fatalf("report for the new artifact: %d", code)
		}
	}
	// Reports of the old artifact: the tag binds another one now.
	for _, node := range []string{"node-c", "node-d"} {
		if code, _ := post(token, report(node, s, "etc/content")); code != http.StatusAccepted {
			t.Fatalf("late report for the old artifact: %d", code)
		}
	}
	if ops := f.waitDone(t); len(ops) != 1 {
		t.Fatalf("the same profile again queued more operations: %+v", ops)
	}
	for _, d := range []digest.Digest{s, s2} {
		f.w.profiles.mu.Lock()
		st := f.w.profiles.states[d]
		f.w.profiles.mu.Unlock()
		if st == nil || st.DecidedAt == 0 {
			t.Errorf("no decision for %s: %+v", d, st)
		} else if want := map[digest.Digest]string{s: "no longer binds", s2: "kept"}[d]; !strings.Contains(st.Decision, want) {
			t.Errorf("decision for %s: %q, want %q", d, st.Decision, want)
		}
	}
}
