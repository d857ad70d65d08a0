package artifact

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestProfileReportCheck(t *testing.T) {
	ok := ProfileReport{Artifact: digest.FromString("a"), Image: "r/app:v1", Node: "n", Paths: []string{"/usr/bin/x", "./usr/bin/x", "etc/y"}}
	if err := ok.Check(); err != nil || strings.Join(ok.Paths, ",") != "usr/bin/x,etc/y" {
		t.Fatalf("a valid report: %v %v", err, ok.Paths)
	}
	many := make([]string, MaxProfilePaths+1)
	for i := range many {
		many[i] = "f"
	}
	for name, r := range map[string]ProfileReport{
		"no artifact":     {Image: "r/app:v1", Node: "n", Paths: []string{"a"}},
		"no image":        {Artifact: digest.FromString("a"), Node: "n", Paths: []string{"a"}},
		"no node":         {Artifact: digest.FromString("a"), Image: "r/app:v1", Paths: []string{"a"}},
		"no paths":        {Artifact: digest.FromString("a"), Image: "r/app:v1", Node: "n"},
		"leaves the root": {Artifact: digest.FromString("a"), Image: "r/app:v1", Node: "n", Paths: []string{"../etc/shadow"}},
		"too many paths":  {Artifact: digest.FromString("a"), Image: "r/app:v1", Node: "n", Paths: many},
	} {
		if err := r.Check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzProfileReport(f *testing.F) {
	f.Add([]byte(`{"artifact":"sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb","image":"r/a:v1","node":"n","paths":["/a","b/../c"]}`))
	f.Add([]byte(`{"paths":["..","\u0000",""]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r ProfileReport
		if json.Unmarshal(b, &r) != nil {
			return
		}
		if r.Check() != nil {
			return
		}
		if len(r.Paths) == 0 || len(r.Paths) > MaxProfilePaths {
			t.Fatalf("%d paths accepted", len(r.Paths))
		}
		seen := map[string]bool{}
		for _, p := range r.Paths {
			if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "\x00") || seen[p] {
				t.Fatalf("path %q accepted", p)
			}
			for _, c := range strings.Split(p, "/") {
				if c == ".." || c == "." || c == "" {
					t.Fatalf("path %q accepted", p)
				}
			}
			seen[p] = true
		}
	})
}
