package cache

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetrics checks what the daemon's dashboards show: bytes stored, hit and miss bytes,
// and that the collectors register with a registry of the daemon's.
func TestMetrics(t *testing.T) {
	s := openStore(t, t.TempDir())
	reg := prometheus.NewRegistry()
	if err := reg.Register(s.Metrics()); err != nil {
		t.Fatalf("registering the cache's metrics: %v", err)
	}
	f := openFile(t, acquire(t, s, layerDigest("l")), "1", 10000)
	mustWrite(t, f, "x", 0, 5000)
	mustRead(t, f, "x", 0, 3000)
	mustRead(t, f, "x", 1000, 1000)
	mustMiss(t, f, 4000, 2000)
	m := s.Metrics()
	for name, c := range map[string]struct {
		got, want float64
	}{
		"hit bytes":    {testutil.ToFloat64(m.HitBytes), 4000},
		"miss bytes":   {testutil.ToFloat64(m.MissBytes), 2000},
		"bytes stored": {testutil.ToFloat64(m.BytesStored), float64(s.Usage())},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", name, c.got, c.want)
		}
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil || n == 0 {
		t.Errorf("gathering: %d series, %v", n, err)
	}
	// A second store (another daemon in the same test binary) registers elsewhere.
	if err := prometheus.NewRegistry().Register(openStore(t, t.TempDir()).Metrics()); err != nil {
		t.Errorf("registering a second store: %v", err)
	}
	var already prometheus.AlreadyRegisteredError
	if err := reg.Register(s.Metrics()); !errors.As(err, &already) {
		t.Errorf("registering twice: %v", err)
	}
}
