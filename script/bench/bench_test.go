package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/test/harness"
)

// The quick benchmark end to end, as `go run ./script/bench --quick` runs it: small workloads,
// one cold run of each mode over the emulated link. It checks that the harness measures
// something plausible, not how fast rill is.
func TestQuickBenchmark(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("the benchmark needs root (containerd, mounts, drop_caches); run it as root after `bash %s`", harness.SetupScript)
	}
	out := t.TempDir()
	cfg, err := parseFlags([]string{"--quick", "--out", out}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	began := time.Now()
	sums, err := run(t.Context(), cfg, &stdout)
	t.Logf("quick benchmark in %s:\n%s", time.Since(began).Round(time.Second), stdout.String())
	if err != nil {
		t.Fatal(err)
	}

	wantModes := []string{modeFull, modeRill, modeRillProfile, modeFleet}
	for _, w := range []string{"bigfile", "smallfiles"} {
		byMode := map[string]summary{}
		for _, s := range sums {
			if s.workload == w {
				byMode[s.mode] = s
			}
		}
		for _, m := range wantModes {
			s, ok := byMode[m]
			if !ok {
				t.Errorf("%s: no result for mode %s", w, m)
				continue
			}
			if s.runs != 1 || s.ready.med <= 0 || s.ready.med > 300 || s.pull.med <= 0 || s.pull.med > s.ready.med {
				t.Errorf("%s, %s: implausible times: %d runs, pull %.3fs, ready %.3fs", w, m, s.runs, s.pull.med, s.ready.med)
			}
			if s.ready.med < s.limit.Seconds() {
				t.Errorf("%s, %s: ready in %.3fs, faster than the physical limit %s", w, m, s.ready.med, s.limit)
			}
			if s.bytesReady.med <= 0 || s.bytesTotal.med < s.bytesReady.med {
				t.Errorf("%s, %s: implausible bytes: %.0f before ready, %.0f in total", w, m, s.bytesReady.med, s.bytesTotal.med)
			}
			if m != modeFull && !s.hasSplit {
				t.Errorf("%s, %s: no fetch split from rill's metrics", w, m)
			}
			if !hasRow(stdout.String(), w, m) {
				t.Errorf("the table has no row for %s, %s", w, m)
			}
		}
		full, streamed := byMode[modeFull], byMode[modeRill]
		// A full pull downloads at least the whole image before the container starts.
		if full.bytesReady.med < float64(full.startBytes) {
			t.Errorf("%s: the full pull fetched %.0f bytes before ready, less than the %d the workload reads", w, full.bytesReady.med, full.startBytes)
		}
		if w == "bigfile" && streamed.bytesReady.med >= full.bytesReady.med {
			t.Errorf("bigfile: streaming fetched %.0f bytes before ready, no fewer than the full pull's %.0f", streamed.bytesReady.med, full.bytesReady.med)
		}
	}
	for _, f := range []string{"results.csv", "runs.csv", "time-to-ready.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s was not written: %v", f, err)
		}
	}
}

// hasRow reports whether the table has a line starting with the workload and the mode.
func hasRow(table, workload, mode string) bool {
	return slices.ContainsFunc(strings.Split(table, "\n"), func(line string) bool {
		f := strings.Fields(line)
		return len(f) > 2 && f[0] == workload && f[1] == mode
	})
}
