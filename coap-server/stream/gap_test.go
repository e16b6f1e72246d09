package stream

import (
	"context"
	"fmt"
	"slices"
	"testing"
)

// readResumed reads cursor c up to upto with a Gap that records where it
// was told ("gap" among the seqs, as -1); during records calls during
// after fn received its first entry (retention dropping entries while
// Read runs).
func readResumed(t *testing.T, e *Engine, c Cursor, upto uint64, during func()) []int64 {
	t.Helper()
	var got []int64
	c.Gap = func() error { got = append(got, -1); return nil }
	first := true
	err := e.Read(context.Background(), []Cursor{c}, upto, func(seq uint64, _ string, _ []byte) error {
		got = append(got, int64(seq))
		if first && during != nil {
			first = false
			during()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func logN(t *testing.T, e *Engine, device string, n int) {
	t.Helper()
	for i := range n {
		if _, _, err := e.LogJSON(context.Background(), device, fmt.Appendf(nil, `{"deviceId":%q,"n":%d}`, device, i), ""); err != nil {
			t.Fatal(err)
		}
	}
}

func span(from, to int64, step int64) []int64 {
	var out []int64
	for s := from; s <= to; s += step {
		out = append(out, s)
	}
	return out
}

// TestReadTellsWhereEntriesWentMissing: a subscriber resuming with since
// is told where entries were dropped while its history was read: the
// LIVELOG_PER_DEVICE limit drops a device's oldest entries as it sends new
// ones, and those the reader had not fetched yet are gone. Entries dropped
// after they were fetched are no gap.
func TestReadTellsWhereEntriesWentMissing(t *testing.T) {
	t.Run("device", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			more int // entries A sends during the read: 150+more-200 of its oldest go
			want []int64
		}{
			// The first page is 11–74: dropping 1–60 takes nothing unread.
			{name: "dropped after fetched", more: 110, want: span(11, 150, 1)},
			// Dropping 1–80 takes 75–80 before they were fetched.
			{name: "dropped before fetched", more: 130, want: slices.Concat(span(11, 74, 1), []int64{-1}, span(81, 150, 1))},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e := openEmbedded(t, Config{LivePerDevice: 200})
				logN(t, e, "A", 150)
				got := readResumed(t, e, Cursor{Device: "A", From: 11}, 150, func() { logN(t, e, "A", tc.more) })
				if !slices.Equal(got, tc.want) {
					t.Fatalf("read since 10:\n got %v\nwant %v", got, tc.want)
				}
			})
		}
	})
	t.Run("dropped while the first page was sent", func(t *testing.T) {
		// The page starts at the expected entry, 11, but 15–20 went while
		// it was sent, after 11–14 and before 21: retention dropping 1–20
		// between two messages of the page, as a busy device at
		// LIVELOG_PER_DEVICE does. The test deletes 15–20 before the fetch
		// and 1–14 after it, which leaves the page and the stream as that
		// would.
		e := openEmbedded(t, Config{})
		logN(t, e, "A", 150)
		del := func(from, to uint64) {
			for seq := from; seq <= to; seq++ {
				if err := e.feedLive.DeleteMsg(context.Background(), seq); err != nil {
					t.Fatal(err)
				}
			}
		}
		afterResumeCheck = func() { del(15, 20) }
		fetched := false
		afterFetch = func() {
			if !fetched {
				fetched = true
				del(1, 14)
			}
		}
		t.Cleanup(func() { afterResumeCheck, afterFetch = nil, nil })
		got := readResumed(t, e, Cursor{Device: "A", From: 11}, 150, nil)
		if want := slices.Concat([]int64{-1}, span(11, 14, 1), span(21, 150, 1)); !slices.Equal(got, want) {
			t.Fatalf("read since 10:\n got %v\nwant %v", got, want)
		}
	})
	t.Run("deleted after upto", func(t *testing.T) {
		// 1–4 are retained and read; 5, published after the subscriber
		// arrived (upto 4), is gone. That is no gap in what the reader
		// reads: the live subscription has 5.
		e := openEmbedded(t, Config{})
		for _, d := range []string{"A", "B", "A", "B", "C"} {
			logN(t, e, d, 1)
		}
		if err := e.feedLive.DeleteMsg(context.Background(), 5); err != nil {
			t.Fatal(err)
		}
		if got, want := readResumed(t, e, Cursor{From: 2}, 4, nil), []int64{2, 3, 4}; !slices.Equal(got, want) {
			t.Fatalf("every device since 1, up to 4: got %v, want %v", got, want)
		}
	})
	t.Run("every device", func(t *testing.T) {
		// A at odd positions, B at even ones, 80 each; 60 more of A drop
		// its oldest 40 (1, 3, … 79), of which 65–79 were not fetched.
		e := openEmbedded(t, Config{LivePerDevice: 100})
		for range 80 {
			logN(t, e, "A", 1)
			logN(t, e, "B", 1)
		}
		got := readResumed(t, e, Cursor{From: 1}, 160, func() { logN(t, e, "A", 60) })
		want := span(1, 64, 1)
		for s := int64(66); s <= 80; s += 2 {
			want = append(want, -1, s)
		}
		want = append(want, span(81, 160, 1)...)
		if !slices.Equal(got, want) {
			t.Fatalf("read since 0:\n got %v\nwant %v", got, want)
		}
	})
	t.Run("expected first entry gone", func(t *testing.T) {
		// Both of A's entries after since are dropped between the check and
		// the reader's start: the reader finds none up to upto, and says so.
		e := openEmbedded(t, Config{LivePerDevice: 2})
		logN(t, e, "A", 3) // 1 2 3, of which 2 3 are kept; since 1
		logN(t, e, "B", 1) // 4
		afterResumeCheck = func() { logN(t, e, "A", 2) }
		t.Cleanup(func() { afterResumeCheck = nil })
		var got []int64
		c := Cursor{Device: "A", From: 2, Gap: func() error { got = append(got, -1); return nil }}
		err := e.Read(context.Background(), []Cursor{c, {Device: "B", From: 4}}, 4, func(seq uint64, _ string, _ []byte) error {
			got = append(got, int64(seq))
			return nil
		})
		if err != nil || !slices.Equal(got, []int64{-1, 4}) {
			t.Fatalf("got %v %v, want the gap, then B's 4", got, err)
		}
	})
	t.Run("dropped while read after a lost since", func(t *testing.T) {
		// since 10 is older than what A retains (51–250 of 250, 200 per
		// device): recovered:false first, then 51 on. The 130 entries A
		// sends meanwhile drop 51–180, of which 115–180 were not fetched:
		// a second gap, for one device and for every device alike.
		for _, c := range []Cursor{{Device: "A", From: 11}, {From: 11}} {
			e := openEmbedded(t, Config{LivePerDevice: 200})
			logN(t, e, "A", 250)
			got := readResumed(t, e, c, 250, func() { logN(t, e, "A", 130) })
			if want := slices.Concat([]int64{-1}, span(51, 114, 1), []int64{-1}, span(181, 250, 1)); !slices.Equal(got, want) {
				t.Fatalf("read %q since 10:\n got %v\nwant %v", c.Device, got, want)
			}
		}
	})
	t.Run("lost at the start", func(t *testing.T) {
		// B at 1, A at 2 3 4: A's 2 goes (2 per device), in the middle of
		// the log. Every device since 1: the gap first, then 3 4, not 1 again.
		e := openEmbedded(t, Config{LivePerDevice: 2})
		logN(t, e, "B", 1)
		logN(t, e, "A", 3)
		got := readResumed(t, e, Cursor{From: 2}, 4, nil)
		if want := []int64{-1, 3, 4}; !slices.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		// since beyond the newest position (a reset stream): all of it, and
		// for every device the gap in it where it is (the subscriber has
		// nothing of this stream); the cursor then starts at 1.
		c := Cursor{Device: "A", From: 10}
		got = readResumed(t, e, c, 4, nil)
		if want := []int64{-1, 3, 4}; !slices.Equal(got, want) {
			t.Fatalf("A since 9: got %v, want %v", got, want)
		}
		cursors := []Cursor{{From: 10, Gap: func() error { return nil }}}
		if err := e.Read(context.Background(), cursors, 4, func(uint64, string, []byte) error { return nil }); err != nil || cursors[0].From != 1 {
			t.Fatalf("after reading a reset stream: From %d, %v; want 1", cursors[0].From, err)
		}
		got = readResumed(t, e, Cursor{From: 10}, 4, nil)
		if want := []int64{-1, 1, -1, 3, 4}; !slices.Equal(got, want) {
			t.Fatalf("every device since 9: got %v, want %v", got, want)
		}
	})
}

// BenchmarkResumeRead is what the resumed cursor's checks cost a since:
// one device's last 100 or 1,000 entries read plainly (From) and resumed
// (From and Gap: Lost, the expected first entry, a check per page).
//
//	go test -run '^$' -bench ResumeRead ./coap-server/stream
func BenchmarkResumeRead(b *testing.B) {
	for _, n := range []int{100, 1000} {
		e := openEmbedded(b, Config{})
		ctx := context.Background()
		for i := range n {
			if _, _, err := e.LogJSON(ctx, "A", fmt.Appendf(nil, `{"deviceId":"A","n":%d}`, i), ""); err != nil {
				b.Fatal(err)
			}
			if _, _, err := e.LogJSON(ctx, "B", []byte(`{"deviceId":"B"}`), ""); err != nil {
				b.Fatal(err)
			}
		}
		upto := uint64(2 * n)
		for _, mode := range []string{"plain", "resumed"} {
			b.Run(fmt.Sprintf("entries=%d/%s", n, mode), func(b *testing.B) {
				gaps := 0
				c := Cursor{Device: "A", From: 1}
				if mode == "resumed" {
					c.Gap = func() error { gaps++; return nil }
				}
				for b.Loop() {
					got := 0
					if err := e.Read(ctx, []Cursor{c}, upto, func(uint64, string, []byte) error { got++; return nil }); err != nil {
						b.Fatal(err)
					}
					if got != n || gaps != 0 {
						b.Fatalf("read %d entries and %d gaps, want %d and none", got, gaps, n)
					}
				}
			})
		}
	}
}
