package main

import (
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// dependentSteps are the round trips no puller can overlap before a container reads its first
// byte: the connection (TCP handshake), the manifest by tag, the image config together with the
// layers' TOCs (both named by the manifest, fetched at once), and one round of data requests
// (the start's byte ranges, all in flight at once). A file-system walk or a chain of imports
// that needs one file before it knows the next adds steps on top; the limit ignores them, so
// it is a floor, not a target a lazy puller can always reach.
const dependentSteps = 4

// physicalLimit is the least time the workload can be ready in over the link: the bytes it
// reads at start as they cross the link — compressed, estimated at the image's compression
// ratio (its files' own ratios are not known here) — at the link's rate, plus one round trip
// per dependent step.
func physicalLimit(w *workload, cfg *config) time.Duration {
	if cfg.noLink {
		return 0
	}
	transfer := float64(startCompressed(w)*8) / cfg.bandwidth
	return time.Duration(transfer*float64(time.Second)) + dependentSteps*cfg.rtt
}

// startCompressed estimates the compressed size of what w reads at start: its start bytes at
// the image's compression ratio.
func startCompressed(w *workload) int64 {
	if w.imageBytes <= 0 || w.compressed >= w.imageBytes {
		return w.startBytes
	}
	return int64(float64(w.startBytes) * float64(w.compressed) / float64(w.imageBytes))
}

// stat is a median, minimum and maximum.
type stat struct{ med, min, max float64 }

func statOf(vs []float64) stat {
	if len(vs) == 0 {
		return stat{}
	}
	s := slices.Sorted(slices.Values(vs))
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med: med, min: s[0], max: s[len(s)-1]}
}

// summary is the result of one workload and mode over its runs.
type summary struct {
	workload, mode                 string
	runs                           int
	limit                          time.Duration
	startBytes                     int64
	ready, pull                    stat // seconds
	bytesReady, bytesTotal         stat // bytes
	onDemand, prefetch, background stat // bytes (rill)
	requests                       stat // rill's registry requests before ready
	hasSplit                       bool
}

func summarize(ws []*workload, cfg *config, rs []runResult) []summary {
	var out []summary
	for _, w := range ws {
		for _, mode := range cfg.modes {
			s := summary{workload: w.name, mode: mode, limit: physicalLimit(w, cfg), startBytes: w.startBytes}
			var ready, pull, br, bt, od, pf, bg, rq []float64
			for _, r := range rs {
				if r.workload != w.name || r.mode != mode {
					continue
				}
				s.runs++
				ready, pull = append(ready, r.ready.Seconds()), append(pull, r.pull.Seconds())
				br, bt = append(br, float64(r.bytesReady)), append(bt, float64(r.bytesTotal))
				if r.fetched != nil {
					s.hasSplit = true
					od = append(od, float64(r.fetched["on_demand"]))
					pf = append(pf, float64(r.fetched["prefetch"]))
					bg = append(bg, float64(r.fetched["background"]))
					rq = append(rq, float64(r.requests))
				}
			}
			if s.runs == 0 {
				continue
			}
			s.ready, s.pull, s.bytesReady, s.bytesTotal = statOf(ready), statOf(pull), statOf(br), statOf(bt)
			s.onDemand, s.prefetch, s.background, s.requests = statOf(od), statOf(pf), statOf(bg), statOf(rq)
			out = append(out, s)
		}
	}
	return out
}

// report prints the table and writes the CSVs and the chart into --out.
func (bn *bench) report(stdout io.Writer, ws []*workload, rs []runResult, sums []summary) error {
	cfg := bn.cfg
	fmt.Fprintf(stdout, "\nTime to ready over %s; %d cold run(s) each (median [min–max]).\n", bn.linkText(), cfg.runs)
	for _, w := range ws {
		fmt.Fprintf(stdout, "  %-10s %s uncompressed, %s in the registry; reads %s at start (≈ %s compressed); prefetch profile: %s\n",
			w.name, mb(w.imageBytes), mb(w.compressed), mb(w.startBytes), mb(startCompressed(w)), w.profileSource)
	}
	fmt.Fprintln(stdout)
	writeTable(stdout, sums)
	fmt.Fprintf(stdout, "\nlimit: bytes read at start, compressed (at the image's compression ratio), ÷ bandwidth + %d round trips (connect, manifest, config+TOCs, data).\n", dependentSteps)
	fmt.Fprintf(stdout, "rill split: compressed bytes rill fetched by kind (rill_fs_fetched_bytes_total), at the end of the run.\n")
	if slices.Contains(cfg.modes, modeRillProfile) {
		fmt.Fprintf(stdout, "rill-profile: the profile named above, passed to rill create --prefetch-profile (recorded by rill-snapshotter in a cold run of the rill mode, unless --profile gave one).\n")
	}
	if slices.Contains(cfg.modes, modeFleet) {
		fmt.Fprintf(stdout, "fleet: a second node's cold start, after a first node streamed the image without a profile, recorded its start and reported it to rill watch, which gave the tag's artifact that profile (layers not converted again).\n")
		for _, w := range ws {
			if w.fleetSource != "" {
				fmt.Fprintf(stdout, "  %-10s fleet profile %s\n", w.name, w.fleetSource)
			}
		}
	}
	if hasStargz(sums) {
		fmt.Fprintf(stdout, "stargz: stargz-snapshotter %s (stargz-grpc, built from its library packages by script/bench/stargz) pulling the workload converted by estargz.Build, as its tools convert (gzip level 9, no prioritized files: no prefetch).\n", stargzVersion)
		if slices.Contains(cfg.modes, modeStargzOpt) {
			fmt.Fprintf(stdout, "stargz-opt: the same, converted with the profile as prioritized files (estargz.WithPrioritizedFiles: those files first, then the prefetch landmark, as `ctr-remote image optimize` makes); stargz-snapshotter prefetches up to the landmark at mount.\n")
			for _, w := range ws {
				if w.stargzSource != "" {
					fmt.Fprintf(stdout, "  %-10s prioritized files: %s\n", w.name, w.stargzSource)
				}
			}
		}
		fmt.Fprintf(stdout, "\nrill ÷ stargz-snapshotter, time to ready (medians; rill without a profile against stargz without optimization, with a profile against the optimized eStargz):\n")
		writeStargzRatios(stdout, sums)
	}
	if err := writeCSVs(cfg.out, rs, sums); err != nil {
		return err
	}
	chart := filepath.Join(cfg.out, "time-to-ready.png")
	if err := drawChart(chart, sums, bn.linkLabel()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s, %s and %s\n", filepath.Join(cfg.out, "results.csv"), filepath.Join(cfg.out, "runs.csv"), chart)
	return nil
}

// stargzCounterpart is the stargz mode a mode is compared with: the one with the same
// knowledge of the start (none, or the profile), or "" for modes compared with neither.
func stargzCounterpart(mode string) string {
	switch mode {
	case modeRill:
		return modeStargz
	case modeRillProfile, modeFleet:
		return modeStargzOpt
	}
	return ""
}

// readyRatio is s's median time to ready divided by that of mode on the same workload, or 0
// when mode was not measured.
func readyRatio(sums []summary, s summary, mode string) float64 {
	for _, o := range sums {
		if o.workload == s.workload && o.mode == mode && o.ready.med > 0 {
			return s.ready.med / o.ready.med
		}
	}
	return 0
}

// hasStargz reports whether any stargz mode was measured.
func hasStargz(sums []summary) bool {
	return slices.ContainsFunc(sums, func(s summary) bool { return isStargz(s.mode) })
}

func ratioText(r float64) string {
	if r <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", r)
}

func ratioCSV(r float64) string {
	if r <= 0 {
		return ""
	}
	return fmt.Sprintf("%.3f", r)
}

// writeStargzRatios prints, per workload, rill's time to ready over stargz-snapshotter's.
func writeStargzRatios(w io.Writer, sums []summary) {
	for _, s := range sums {
		c := stargzCounterpart(s.mode)
		if c == "" {
			continue
		}
		if r := readyRatio(sums, s, c); r > 0 {
			verdict := "slower"
			if r < 1 {
				verdict = fmt.Sprintf("%.2f× as fast", 1/r)
			}
			fmt.Fprintf(w, "  %-10s %-12s ÷ %-10s = %s (%s; issue 13's goal: ≤ 0.50×)\n", s.workload, s.mode, c, ratioText(r), verdict)
		}
	}
}

func rng(s stat, f func(float64) string) string {
	if s.min == s.max {
		return f(s.med)
	}
	return fmt.Sprintf("%s [%s–%s]", f(s.med), f(s.min), f(s.max))
}

func secs(v float64) string { return fmt.Sprintf("%.2fs", v) }
func mbs(v float64) string  { return fmt.Sprintf("%.1f", v/1e6) }

func writeTable(w io.Writer, sums []summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	withStargz := hasStargz(sums)
	stargzCols := ""
	if withStargz {
		stargzCols = "ready ÷ stargz\tready ÷ stargz-opt\t"
	}
	fmt.Fprintln(tw, "workload\tmode\truns\tready\tpull\tMB before ready\tMB total\t"+stargzCols+"limit\tready/limit\trill split MB (on-demand/prefetch/background)\trequests before ready\t")
	for _, s := range sums {
		ratio, limit := "-", "-"
		if s.limit > 0 {
			limit = secs(s.limit.Seconds())
			ratio = fmt.Sprintf("%.1f×", s.ready.med/s.limit.Seconds())
		}
		split, reqs := "-", "-"
		if s.hasSplit {
			split = fmt.Sprintf("%s / %s / %s", mbs(s.onDemand.med), mbs(s.prefetch.med), mbs(s.background.med))
			reqs = fmt.Sprintf("%.0f", s.requests.med)
		}
		vs := ""
		if withStargz {
			vs = ratioText(readyRatio(sums, s, modeStargz)) + "\t" + ratioText(readyRatio(sums, s, modeStargzOpt)) + "\t"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s%s\t%s\t%s\t%s\t\n", s.workload, s.mode, s.runs,
			rng(s.ready, secs), rng(s.pull, secs), rng(s.bytesReady, mbs), rng(s.bytesTotal, mbs), vs, limit, ratio, split, reqs)
	}
	tw.Flush()
}

func writeCSVs(dir string, rs []runResult, sums []summary) error {
	var runs [][]string
	runs = append(runs, []string{"workload", "mode", "run", "pull_s", "ready_s", "bytes_before_ready", "bytes_total",
		"rill_on_demand_bytes", "rill_prefetch_bytes", "rill_background_bytes", "rill_requests_before_ready"})
	for _, r := range rs {
		row := []string{r.workload, r.mode, fmt.Sprint(r.run), f3(r.pull.Seconds()), f3(r.ready.Seconds()),
			fmt.Sprint(r.bytesReady), fmt.Sprint(r.bytesTotal)}
		if r.fetched != nil {
			row = append(row, fmt.Sprint(r.fetched["on_demand"]), fmt.Sprint(r.fetched["prefetch"]), fmt.Sprint(r.fetched["background"]), fmt.Sprint(r.requests))
		} else {
			row = append(row, "", "", "", "")
		}
		runs = append(runs, row)
	}
	var res [][]string
	res = append(res, []string{"workload", "mode", "runs", "ready_median_s", "ready_min_s", "ready_max_s",
		"pull_median_s", "pull_min_s", "pull_max_s", "bytes_before_ready_median", "bytes_total_median",
		"start_bytes", "limit_s", "bytes_before_ready_min", "bytes_before_ready_max", "bytes_total_min", "bytes_total_max",
		"ready_vs_stargz", "ready_vs_stargz_opt"})
	for _, s := range sums {
		res = append(res, []string{s.workload, s.mode, fmt.Sprint(s.runs), f3(s.ready.med), f3(s.ready.min), f3(s.ready.max),
			f3(s.pull.med), f3(s.pull.min), f3(s.pull.max), fmt.Sprintf("%.0f", s.bytesReady.med), fmt.Sprintf("%.0f", s.bytesTotal.med),
			fmt.Sprint(s.startBytes), f3(s.limit.Seconds()),
			fmt.Sprintf("%.0f", s.bytesReady.min), fmt.Sprintf("%.0f", s.bytesReady.max),
			fmt.Sprintf("%.0f", s.bytesTotal.min), fmt.Sprintf("%.0f", s.bytesTotal.max),
			ratioCSV(readyRatio(sums, s, modeStargz)), ratioCSV(readyRatio(sums, s, modeStargzOpt))})
	}
	for name, rows := range map[string][][]string{"runs.csv": runs, "results.csv": res} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		w := csv.NewWriter(f)
		err = w.WriteAll(rows)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}

func f3(v float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
}
