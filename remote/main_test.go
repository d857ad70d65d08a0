package remote

import (
	"os"
	"testing"

	"github.com/sirupsen/logrus"
)

// TestMain keeps containerd's informational lines about localhost TLS fallback, printed for
// every test registry, out of the test output; tests that check logs use their own logger.
func TestMain(m *testing.M) {
	logrus.SetLevel(logrus.WarnLevel)
	os.Exit(m.Run())
}
