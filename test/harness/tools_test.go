package harness

import (
	"strings"
	"testing"
)

func TestCheckToolsNamesTheSetupScript(t *testing.T) {
	err := CheckTools("go", "rill-no-such-tool")
	if err == nil {
		t.Fatal("CheckTools accepted a missing tool")
	}
	for _, want := range []string{"rill-no-such-tool", SetupScript} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestUnescapeMountPath(t *testing.T) {
	if got := unescapeMountPath(`/tmp/a\040b\011c`); got != "/tmp/a b\tc" {
		t.Errorf("unescapeMountPath = %q", got)
	}
}
