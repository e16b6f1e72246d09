package sim

import (
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

func TestBucketEdges(t *testing.T) {
	for i := 0; i < histBuckets; i++ {
		u := upper(i)
		if bucket(u) != i {
			t.Fatalf("bucket(upper(%d)=%d) = %d", i, u, bucket(u))
		}
		if i > 0 && bucket(upper(i-1)+1) != i {
			t.Fatalf("value %d after bucket %d's edge lands in %d, want %d", upper(i-1)+1, i-1, bucket(upper(i-1)+1), i)
		}
	}
}

func TestQuantilesWithinResolution(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	samples := make([]time.Duration, 100000)
	for i := range samples {
		// Log-normal-ish latencies from ~50 µs to tens of ms, like a real run.
		d := time.Duration(float64(200*time.Microsecond) * (0.3 + rng.ExpFloat64()*rng.ExpFloat64()))
		samples[i] = d
		h.Record(d)
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := samples[int(q*float64(len(samples)))-1]
		got := h.Quantile(q)
		if got < exact-time.Microsecond || float64(got) > float64(exact)*1.016+float64(time.Microsecond) {
			t.Errorf("q%.3f = %v, exact %v: outside the 1.6 %% resolution", q, got, exact)
		}
	}
	if h.Max() != samples[len(samples)-1] || h.Quantile(1) != h.Max() {
		t.Errorf("max %v / q1 %v, want %v", h.Max(), h.Quantile(1), samples[len(samples)-1])
	}
	if h.Count() != uint64(len(samples)) {
		t.Errorf("count %d", h.Count())
	}
}

func TestHistogramExtremes(t *testing.T) {
	var h Histogram
	if h.Quantile(0.99) != 0 {
		t.Error("empty histogram has a quantile")
	}
	h.Record(-time.Second)
	h.Record(365 * 24 * time.Hour)
	if h.Quantile(0.5) != 0 || h.Max() != 365*24*time.Hour {
		t.Errorf("q50 %v max %v", h.Quantile(0.5), h.Max())
	}
}
