package policy

import (
	"os"
	"testing"

	"github.com/sirupsen/logrus"
)

// TestMain keeps containerd's informational lines about localhost TLS fallback, printed for
// every test registry, out of the test output.
func TestMain(m *testing.M) {
	logrus.SetLevel(logrus.WarnLevel)
	os.Exit(m.Run())
}
