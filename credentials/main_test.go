package credentials

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"testing"
)

// TestMain makes the test binary a credential provider plugin when the provider config's env
// says so: it appends the request it reads, as a line, to $PLUGIN_REQUEST_FILE and answers with the content
// of $PLUGIN_RESPONSE_FILE (or fails when $PLUGIN_FAIL is set).
func TestMain(m *testing.M) {
	if os.Getenv("RILL_TEST_PLUGIN") == "" {
		os.Exit(m.Run())
	}
	req, err := io.ReadAll(os.Stdin)
	if err != nil {
		os.Exit(3)
	}
	if f := os.Getenv("PLUGIN_REQUEST_FILE"); f != "" {
		out, err := os.OpenFile(f, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			os.Exit(3)
		}
		out.Write(append(bytes.TrimSpace(req), '\n'))
		out.Close()
	}
	if os.Getenv("PLUGIN_FAIL") != "" {
		fmt.Fprintln(os.Stderr, "plugin failing on purpose")
		os.Exit(1)
	}
	resp, err := os.ReadFile(os.Getenv("PLUGIN_RESPONSE_FILE"))
	if err != nil {
		os.Exit(3)
	}
	os.Stdout.Write(resp)
	os.Exit(0)
}
