package dtls_test

import (
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func lookups(f *fixture, outcome string) float64 {
	return testutil.ToFloat64(f.metrics.KeyLookups.WithLabelValues(outcome))
}
