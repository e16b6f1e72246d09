package sim

import (
	"math/bits"
	"time"
)

// Histogram records durations in microsecond buckets with about 1.6 %
// resolution (64 sub-buckets per power of two, as HDR histograms do), so a
// run of any length keeps a fixed ~30 KiB instead of every sample. It is not
// safe for concurrent use; Stats guards it.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	max    time.Duration
}

const (
	subBits     = 6
	subBuckets  = 1 << subBits                         // values below this many µs are exact
	histBuckets = subBuckets + (64-subBits)*subBuckets // 64 buckets per octave above subBuckets
)

// bucket maps a value in µs to its bucket index.
func bucket(us uint64) int {
	if us < subBuckets {
		return int(us)
	}
	shift := bits.Len64(us) - subBits - 1 // us>>shift is in [64,128)
	i := shift*subBuckets + int(us>>shift)
	if i >= histBuckets {
		i = histBuckets - 1
	}
	return i
}

// upper is the largest µs value that falls in bucket i: percentiles are
// reported at the bucket's upper edge, so they never understate a latency.
func upper(i int) uint64 {
	if i < subBuckets {
		return uint64(i)
	}
	shift := (i - subBuckets) / subBuckets
	mant := uint64((i-subBuckets)%subBuckets + subBuckets)
	return (mant+1)<<uint(shift) - 1
}

// Record adds one sample; negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucket(uint64(d/time.Microsecond))]++
	h.n++
	if d > h.max {
		h.max = d
	}
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Max is the largest sample, exact.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the q-quantile (0 < q ≤ 1), or 0 without samples. The
// answer is capped at Max, which is exact.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			d := time.Duration(upper(i)) * time.Microsecond
			if d > h.max {
				d = h.max
			}
			return d
		}
	}
	return h.max
}
