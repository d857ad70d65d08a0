package watch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/rillstream/rill/convert/operation"
)

// Client talks to a watcher's local API.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient returns a client of the watcher at addr: "unix:///path" or "http://host:port".
func NewClient(addr string) (*Client, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" {
			return nil, fmt.Errorf("watcher address %q names no socket: %w", addr, errdefs.ErrInvalidArgument)
		}
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
		return &Client{base: "http://watcher", hc: &http.Client{Transport: tr}}, nil
	}
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("watcher address %q: want unix:///path or http://host:port: %w", addr, errdefs.ErrInvalidArgument)
	}
	return &Client{base: strings.TrimSuffix(addr, "/"), hc: &http.Client{}}, nil
}

// List returns every operation, oldest first.
func (c *Client) List(ctx context.Context) ([]operation.Operation, error) {
	var ops []operation.Operation
	return ops, c.do(ctx, http.MethodGet, "/v1/operations", &ops)
}

// Get returns one operation; NotFound when the watcher has none of that ID.
func (c *Client) Get(ctx context.Context, id string) (operation.Operation, error) {
	var op operation.Operation
	return op, c.do(ctx, http.MethodGet, "/v1/operations/"+url.PathEscape(id), &op)
}

// Cancel cancels an operation and returns it once it stopped; FailedPrecondition when it had
// already ended.
func (c *Client) Cancel(ctx context.Context, id string) (operation.Operation, error) {
	var op operation.Operation
	return op, c.do(ctx, http.MethodPost, "/v1/operations/"+url.PathEscape(id)+"/cancel", &op)
}

// Create submits an operator's create (rill create --no-wait) and returns its operation,
// queued.
func (c *Client) Create(ctx context.Context, req CreateRequest) (operation.Operation, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return operation.Operation{}, err
	}
	var op operation.Operation
	return op, c.send(ctx, http.MethodPost, "/v1/operations", body, &op)
}

// Reconcile makes the watcher reconcile now and returns how many operations it queued.
func (c *Client) Reconcile(ctx context.Context) (int, error) {
	var res struct {
		Queued int `json:"queued"`
	}
	return res.Queued, c.do(ctx, http.MethodPost, "/v1/reconcile", &res)
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	return c.send(ctx, method, path, nil, out)
}

// send sends payload (JSON, or none when nil) and decodes the answer into out.
func (c *Client) send(ctx context.Context, method, path string, payload []byte, out any) error {
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach the watcher: %w: %w", err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read the watcher's answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e apiError
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		var kind error = errdefs.ErrUnknown
		switch resp.StatusCode {
		case http.StatusNotFound:
			kind = errdefs.ErrNotFound
		case http.StatusConflict:
			kind = errdefs.ErrFailedPrecondition
		case http.StatusBadRequest:
			kind = errdefs.ErrInvalidArgument
		case http.StatusForbidden:
			kind = errdefs.ErrPermissionDenied
		}
		return fmt.Errorf("%s: %w", msg, kind)
	}
	return json.Unmarshal(body, out)
}
