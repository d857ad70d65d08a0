package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"
	"github.com/rillstream/rill/config"
	"github.com/rillstream/rill/snapshotter/status"
)

// runStatus prints the state of the layers this node streams, from rill-snapshotter's status
// socket.
func runStatus(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill status", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	socket := fs.String("socket", config.DefaultStatusAddress, "rill-snapshotter's status socket (its status_address)")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill status [flags]\n\nShows the layers rill-snapshotter streams on this node: image, why it streams, bytes local,\nprefetch, background fetch and verification, last error.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	layers, err := fetchStatus(ctx, *socket)
	if err != nil {
		return err
	}
	if *asJSON { // the layers, as before; the node's state is GET /v1/node of the socket
		return writeJSON(env.stdout, layers)
	}
	node, err := fetchNode(ctx, *socket)
	if err != nil {
		return err
	}
	if !node.CacheDiskFullSince.IsZero() {
		fmt.Fprintf(env.stdout, "CACHE DISK FULL for %s: streamed data is not kept on disk and is fetched again when read again\n",
			time.Since(node.CacheDiskFullSince).Round(time.Second))
	}
	for _, h := range node.UnhealthyHosts {
		fmt.Fprintf(env.stdout, "REGISTRY HOST UNHEALTHY %s since %s ago: its layers are pulled in full until %s (%s)\n",
			h.Host, time.Since(h.Since).Round(time.Second), h.Until.Format(time.RFC3339), h.LastError)
	}
	if len(layers) == 0 {
		fmt.Fprintln(env.stdout, "no streamed layers")
		return nil
	}
	w := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "BLOB\tIMAGE\tREASON\tLOCAL/TOTAL\tPREFETCH\tBACKGROUND\tMOUNTED\tERROR")
	for _, l := range layers {
		prefetch := "done"
		if !l.PrefetchDone {
			prefetch = "running"
		}
		blob := l.Blob.String()
		if len(blob) > 19 {
			blob = blob[:19]
		}
		image := l.Image
		if image == "" {
			image = l.Ref // a layer streamed by a rill that did not record the image
		}
		background := l.Background
		if l.Retries > 0 && background == "incomplete" {
			background = fmt.Sprintf("incomplete (%d retries, next in %s)", l.Retries, max(time.Until(l.NextRetry), 0).Round(time.Second))
		} else if l.Retries > 0 {
			background = fmt.Sprintf("%s (%d retries)", background, l.Retries)
		}
		if l.Unavailable {
			blob, background = "(unavailable)", "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s/%s\t%s\t%s\t%s ago\t%s\n", blob, image, l.Reason,
			units.BytesSize(float64(l.LocalBytes)), units.BytesSize(float64(l.Bytes)), prefetch, background,
			time.Since(l.Mounted).Round(time.Second), l.LastError)
	}
	return w.Flush()
}

func fetchStatus(ctx context.Context, socket string) ([]status.Layer, error) {
	var layers []status.Layer
	found, err := getStatus(ctx, socket, status.PathLayers, &layers)
	if err == nil && !found {
		err = fmt.Errorf("rill-snapshotter at %s serves no %s", socket, status.PathLayers)
	}
	return layers, err
}

// fetchNode reads the node's state; a daemon older than /v1/node has none to tell.
func fetchNode(ctx context.Context, socket string) (status.Node, error) {
	var node status.Node
	_, err := getStatus(ctx, socket, status.PathNode, &node)
	return node, err
}

// getStatus decodes the JSON at path of the status socket into v; false when not served.
func getStatus(ctx context.Context, socket, path string, v any) (bool, error) {
	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://rill"+path, nil)
	if err != nil {
		return false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			return false, fmt.Errorf("cannot reach rill-snapshotter at %s (is it running? is --socket its status_address? run as root): %w", socket, err)
		}
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return false, nil
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("rill-snapshotter answered %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return false, fmt.Errorf("decode status %s: %w", path, err)
	}
	return true, nil
}
