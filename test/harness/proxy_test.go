package harness

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A registry stand-in: one blob, served with ranges as distribution serves them.
func blobServer(t *testing.T, blob []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.Write([]byte("{}"))
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func flipped(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[i] = b[i] ^ 0xff
	}
	return out
}

func TestProxyCorruptsOnlyBlobRangeData(t *testing.T) {
	blob := []byte(strings.Repeat("the quick brown fox jumps over the lazy dog\n", 200))
	p, err := startProxy(blobServer(t, blob))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(path, rng string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.Host()+path, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s (Range %q): %v", path, rng, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}
	const path = "/v2/repo/blobs/sha256:abc"

	if _, body := get(path, "bytes=10-99"); !bytes.Equal(body, blob[10:100]) {
		t.Fatalf("forwarding: got %q", body)
	}

	p.SetCorrupt(true)
	if _, body := get("/v2/", ""); string(body) != "{}" {
		t.Errorf("corrupting: a response that is no blob range changed: %q", body)
	}
	resp, body := get(path, "bytes=10-99")
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != "bytes 10-99/"+itoa(len(blob)) || !bytes.Equal(body, flipped(blob[10:100])) {
		t.Errorf("corrupting a single range: status %d, Content-Range %q, body %q; want blob[10:100] flipped", resp.StatusCode, resp.Header.Get("Content-Range"), body)
	}
	resp, body = get(path, "bytes=0-9,1000-1999")
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || resp.ContentLength != int64(len(body)) {
		t.Fatalf("corrupting a multi-range response: Content-Type %q (%v), Content-Length %d for %d bytes", resp.Header.Get("Content-Type"), err, resp.ContentLength, len(body))
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	wants := [][]byte{flipped(blob[0:10]), flipped(blob[1000:2000])}
	for i, want := range wants {
		part, err := mr.NextPart()
		if err != nil {
			t.Fatalf("part %d of the corrupted multi-range response: %v", i, err)
		}
		got, _ := io.ReadAll(part)
		if !bytes.Equal(got, want) {
			t.Errorf("part %d (%s) of the corrupted multi-range response: %q, want the data flipped", i, part.Header.Get("Content-Range"), got)
		}
	}
	if _, err := mr.NextPart(); !errors.Is(err, io.EOF) {
		t.Errorf("the corrupted multi-range response has more parts: %v", err)
	}
	if p.Corrupted() != 2 {
		t.Errorf("Corrupted() = %d after two blob range responses", p.Corrupted())
	}

	p.SetCorrupt(false)
	if _, body := get(path, "bytes=10-99"); !bytes.Equal(body, blob[10:100]) {
		t.Errorf("after the corruption stopped: got %q", body)
	}
}

func TestProxyOutageAndStall(t *testing.T) {
	blob := []byte("0123456789")
	p, err := startProxy(blobServer(t, blob))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	get := func(timeout time.Duration) error {
		client := &http.Client{Timeout: timeout, Transport: &http.Transport{}}
		resp, err := client.Get("http://" + p.Host() + "/v2/repo/blobs/sha256:abc")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && !bytes.Equal(body, blob) {
			err = errors.New("wrong body " + string(body))
		}
		return err
	}

	p.SetOutage(true)
	if err := get(5 * time.Second); err == nil {
		t.Error("a GET through a proxy with the registry down succeeded")
	}
	p.SetOutage(false)
	if err := get(5 * time.Second); err != nil {
		t.Errorf("with the registry back: %v", err)
	}

	p.SetStall(true)
	began := time.Now()
	var nerr net.Error
	if err := get(300 * time.Millisecond); !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Errorf("a GET through a stalled proxy: %v after %s; want a timeout", err, time.Since(began))
	}
	p.SetStall(false)
	if err := get(5 * time.Second); err != nil {
		t.Errorf("after the stall: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
