package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/distribution/reference"

	"github.com/rillstream/rill/config"
	"github.com/rillstream/rill/snapshotter/status"
)

// fallbackHints says what to do about the reasons a layer is pulled in full.
var fallbackHints = map[string]string{
	status.ReasonNoBound:           "rill create IMAGE binds a streaming artifact to the tag (pull by tag; by digest only referrers count, with streaming.trust = referrers)",
	status.ReasonNoArtifact:        "rill create IMAGE",
	status.ReasonBoundInvalid:      "the bound artifact fails a check (rill-snapshotter's log says which): rill create --force IMAGE",
	status.ReasonStreamingDisabled: "streaming.enabled = false in rill's config",
	status.ReasonNoPlatformInIndex: "add the image's platform to streaming.platforms",
	status.ReasonTOCFetchError:     "the registry is unreachable from the node or refuses rill: rill doctor IMAGE",
	status.ReasonResolveError:      "the registry is unreachable from the node or refuses rill: rill doctor IMAGE",
	status.ReasonReferrersError:    "the registry's referrers failed: rill doctor IMAGE",
	status.ReasonTOCInvalid:        "the layer's TOC fails verification: rill verify IMAGE",
	status.ReasonBadLabels:         "containerd passed unreadable labels: check the export and disable_snapshot_annotations (rill doctor)",
}

func runWhy(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill why", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	socket := fs.String("socket", config.DefaultStatusAddress, "rill-snapshotter's status socket (its status_address)")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill why [IMAGE] [flags]\n\nLists rill-snapshotter's recent decisions (the last 512 layers prepared) per image: layers\nstreamed and pulled in full, with the reasons. With IMAGE, each of its layers and what to do\nabout a full pull.\n\n")
		fs.PrintDefaults()
	}
	var image string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		if image != "" {
			return fmt.Errorf("one IMAGE only: %w", errUsage)
		}
		image, args = fs.Arg(0), fs.Args()[1:]
	}
	ds, err := fetchDecisions(ctx, *socket)
	if err != nil {
		return err
	}
	if image != "" {
		ds = decisionsOf(ds, image)
	}
	if *asJSON {
		return writeJSON(env.stdout, ds)
	}
	if len(ds) == 0 {
		if image != "" {
			fmt.Fprintf(env.stdout, "no recent decisions for %s (rill-snapshotter keeps the last 512 layers prepared since it started; was the image pulled into rill?)\n", image)
		} else {
			fmt.Fprintln(env.stdout, "no recent decisions (no image layer prepared since rill-snapshotter started)")
		}
		return nil
	}
	if image != "" {
		return printImageDecisions(env.stdout, ds)
	}
	return printDecisionSummary(env.stdout, ds)
}

// decisionsOf keeps the decisions of image, compared as normalized references.
func decisionsOf(ds []status.Decision, image string) []status.Decision {
	want := normalizeRef(image)
	var out []status.Decision
	for _, d := range ds {
		if normalizeRef(d.ImageRef) == want {
			out = append(out, d)
		}
	}
	return out
}

func normalizeRef(s string) string {
	if n, err := reference.ParseNormalizedNamed(s); err == nil {
		return reference.TagNameOnly(n).String()
	}
	return s
}

// printDecisionSummary prints one line per image, the most recent first.
func printDecisionSummary(w io.Writer, ds []status.Decision) error {
	type row struct {
		ref          string
		last         time.Time
		stream, full int
		reasons      map[string]int
	}
	rows := map[string]*row{}
	for _, d := range ds {
		r := rows[d.ImageRef]
		if r == nil {
			r = &row{ref: d.ImageRef, reasons: map[string]int{}}
			rows[d.ImageRef] = r
		}
		if d.Time.After(r.last) {
			r.last = d.Time
		}
		if d.Result == status.ResultStream {
			r.stream++
		} else {
			r.full++
		}
		r.reasons[d.Result+":"+d.Reason]++
	}
	list := make([]*row, 0, len(rows))
	for _, r := range rows {
		list = append(list, r)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].last.After(list[j].last) })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tLAST\tSTREAMED\tFULL PULL\tREASONS")
	for _, r := range list {
		var reasons []string
		for k, n := range r.reasons {
			result, reason, _ := strings.Cut(k, ":")
			label := reason
			if result != status.ResultStream {
				label = "full: " + reason
			}
			reasons = append(reasons, fmt.Sprintf("%s ×%d", label, n))
		}
		sort.Strings(reasons)
		fmt.Fprintf(tw, "%s\t%s ago\t%d\t%d\t%s\n", r.ref, time.Since(r.last).Round(time.Second), r.stream, r.full, strings.Join(reasons, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\n'rill why IMAGE' lists an image's layers and what to do about a full pull.")
	return nil
}

// printImageDecisions prints each layer decision of one image and a hint per fallback reason.
func printImageDecisions(w io.Writer, ds []status.Decision) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tLAYER\tRESULT\tREASON\tERROR")
	reasons := map[string]bool{}
	for _, d := range ds {
		result := "streamed"
		if d.Result != status.ResultStream {
			result = "pulled in full"
			reasons[d.Reason] = true
		}
		layer := d.Layer.Encoded()
		if len(layer) > 12 {
			layer = layer[:12]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Time.Local().Format(time.TimeOnly), layer, result, d.Reason, d.Error)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	keys := make([]string, 0, len(reasons))
	for r := range reasons {
		keys = append(keys, r)
	}
	sort.Strings(keys)
	for _, r := range keys {
		hint := fallbackHints[r]
		if status.IsPlatformReason(r) {
			hint = "the image's platform is not in streaming.platforms"
		}
		if hint == "" {
			hint = "see rill-snapshotter's log (journalctl -u rill-snapshotter | grep 'pulled in full')"
		}
		fmt.Fprintf(w, "%s: %s\n", r, strings.ReplaceAll(hint, "IMAGE", ds[0].ImageRef))
	}
	return nil
}

func fetchDecisions(ctx context.Context, socket string) ([]status.Decision, error) {
	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://rill"+status.PathDecisions, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			return nil, fmt.Errorf("cannot reach rill-snapshotter at %s (is it running? is --socket its status_address? run as root): %w", socket, err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("rill-snapshotter at %s answered %s (older than rill why?)", socket, resp.Status)
	}
	var ds []status.Decision
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&ds); err != nil {
		return nil, fmt.Errorf("decode decisions: %w", err)
	}
	return ds, nil
}
