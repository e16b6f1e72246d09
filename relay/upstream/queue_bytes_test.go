package upstream

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// Watchers (browsers' wspeer peers) are charged what each frame costs
// held, the ring's unit (wspeer.FrameCost), so a Budget shared by the
// browsers bounds in bytes what slow ones make the relay hold: one that
// would take its budget past the bound with frames waiting is cut
// (wspeer.ErrBudget), the others go on, and a closed peer gives its bytes
// back. The peers are not run: nothing drains their queues.
func TestWatchersAreChargedWhatFramesCost(t *testing.T) {
	f := newFakeLog(t)
	mgr, m := newManager(t, f.srv.URL, nil)
	cost := wspeer.FrameCost(len(entryFrame(1))) // every entryFrame(1..9) is as long
	watch := func(b *wspeer.Budget) (*wspeer.Peer, *Watch) {
		t.Helper()
		var p *wspeer.Peer
		w, err := mgr.WatchFrom("DEV", LiveOnly, func(Backlog) Sender {
			p = wspeer.New(wspeer.Config{QueueSize: 100, QueueBytes: 1 << 20, Budget: b})
			return p
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Close)
		return p, w
	}
	wide, narrow := wspeer.NewBudget(1<<20), wspeer.NewBudget(int64(2*cost))
	a, wa := watch(wide)
	testwait.For(t, "the link up", func() bool { return f.subscribers() == 1 })
	b, _ := watch(narrow)
	f.publish(1, 2, 3, 4, 5)
	testwait.For(t, "five frames charged to the first watcher", func() bool { return wide.Used() == int64(5*cost) })
	if got := testutil.ToFloat64(m.HistoryBytes); got != float64(5*cost) {
		t.Errorf("ring holds %v B for the same five frames charged %d B", got, 5*cost)
	}
	select {
	case <-b.Done():
	default:
		t.Fatal("the second watcher, over its budget of two frames, is still open")
	}
	if err := b.Reason(); !errors.Is(err, wspeer.ErrBudget) {
		t.Fatalf("second watcher closed with %v, want ErrBudget", err)
	}
	if got := narrow.Used(); got != 0 {
		t.Errorf("the cut watcher still holds %d B of its budget", got)
	}
	select {
	case <-a.Done():
		t.Fatal("the first watcher was cut")
	default:
	}
	wa.Close()
	a.Close(wspeer.ErrClosed)
	if got := wide.Used(); got != 0 {
		t.Errorf("%d B still charged after the first watcher closed", got)
	}
}
