package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/test/harness"
)

// The stargz-snapshotter daemon the stargz modes run builds from script/bench/stargz (its own
// module), and serves its socket. This is the CI check that the wrapper still builds against
// the stargz-snapshotter it pins; the quick benchmark does not run the stargz modes.
func TestStargzDaemonBuilds(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	repoRoot, err := harness.RepoRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	bin, err := buildStargzDaemon(ctx, repoRoot, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %s", bin, time.Since(began).Round(time.Millisecond))
	if os.Geteuid() != 0 {
		t.Skip("serving needs root (an overlay mount check); built only")
	}
	dir := t.TempDir()
	p, err := startPeer(ctx, stargzPeer(bin), dir, "127.0.0.1:1")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "peer.log"))
		t.Fatalf("%v\n%s", err, log)
	}
	if err := p.stop(); err != nil {
		t.Error(err)
	}
	if err := harness.UnmountAll(p.root); err != nil {
		t.Error(err)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "peer.log"))
	if !strings.Contains(string(log), "stargz-snapshotter "+stargzVersion+" serving") {
		t.Errorf("the daemon's log does not say it served stargz-snapshotter %s:\n%s", stargzVersion, log)
	}
}

// The report compares rill with stargz-snapshotter: a ratio column for each stargz mode in the
// table and the CSV, and a line per rill mode against its counterpart.
func TestReportStargzRatios(t *testing.T) {
	sum := func(mode string, ready float64) summary {
		return summary{workload: "python", mode: mode, runs: 1, ready: stat{ready, ready, ready},
			pull: stat{1, 1, 1}, bytesReady: stat{1e7, 1e7, 1e7}, bytesTotal: stat{1e8, 1e8, 1e8}}
	}
	sums := []summary{sum(modeFull, 50), sum(modeStargz, 10), sum(modeStargzOpt, 5), sum(modeRill, 11), sum(modeRillProfile, 4)}
	var table bytes.Buffer
	writeTable(&table, sums)
	for _, want := range []string{"ready ÷ stargz", "ready ÷ stargz-opt", "5.00×", "10.00×", "1.10×", "0.80×"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, table.String())
		}
	}
	for _, m := range []string{modeFull, modeStargz, modeStargzOpt, modeRill, modeRillProfile} {
		if !hasRow(table.String(), "python", m) {
			t.Errorf("the table has no row for %s:\n%s", m, table.String())
		}
	}
	var lines bytes.Buffer
	writeStargzRatios(&lines, sums)
	if !strings.Contains(lines.String(), "rill         ÷ stargz     = 1.10×") || !strings.Contains(lines.String(), "rill-profile ÷ stargz-opt = 0.80×") {
		t.Errorf("ratio lines:\n%s", lines.String())
	}

	dir := t.TempDir()
	if err := writeCSVs(dir, nil, sums); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "results.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := slices.Index(rows[0], "ready_vs_stargz_opt")
	if col < 0 || len(rows) != 6 || rows[5][1] != modeRillProfile || rows[5][col] != "0.800" {
		t.Errorf("results.csv: %v", rows)
	}
	if err := drawChart(filepath.Join(dir, "chart.png"), sums, "test link"); err != nil {
		t.Fatal(err)
	}

	// Without stargz modes the table is as before.
	table.Reset()
	writeTable(&table, sums[:1])
	if strings.Contains(table.String(), "stargz") {
		t.Errorf("a table without stargz modes mentions stargz:\n%s", table.String())
	}
}

// The version the report names is the one the daemon's module pins.
func TestStargzVersionPinned(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("stargz", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "github.com/containerd/stargz-snapshotter "+stargzVersion+"\n") {
		t.Errorf("stargz/go.mod does not require stargz-snapshotter %s:\n%s", stargzVersion, data)
	}
}

// --quick keeps its modes; the full benchmark adds stargz-snapshotter's; --modes selects.
func TestStargzModesDefault(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--quick"}, []string{modeFull, modeRill, modeRillProfile, modeFleet}},
		{nil, []string{modeFull, modeStargz, modeStargzOpt, modeRill, modeRillProfile, modeFleet}},
		{[]string{"--quick", "--modes", "stargz,stargz-opt"}, []string{modeStargz, modeStargzOpt}},
	} {
		cfg, err := parseFlags(tc.args, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.modes, tc.want) {
			t.Errorf("%v: modes %v, want %v", tc.args, cfg.modes, tc.want)
		}
	}
}
