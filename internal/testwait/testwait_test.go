package testwait_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and ends
// the goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls wait with a recorder on a goroutine of its own and returns the
// failure message ("" when wait returned).
func run(wait func(t testing.TB)) string {
	f := &fatalRecorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait(f)
	}()
	<-done
	return f.msg
}

func TestForPollsUntilTrue(t *testing.T) {
	calls := 0
	msg := run(func(t testing.TB) {
		testwait.For(t, "five calls", func() bool { calls++; return calls == 5 })
	})
	if msg != "" || calls != 5 {
		t.Fatalf("failed %q after %d calls, want success after 5", msg, calls)
	}
}

func TestForFailsNamingWhat(t *testing.T) {
	msg := run(func(t testing.TB) {
		testwait.For(t, "the impossible", func() bool { return false }, testwait.Within(10*time.Millisecond))
	})
	if !strings.Contains(msg, "timed out waiting for the impossible") {
		t.Fatalf("failure %q does not name what was awaited", msg)
	}
}

func TestForStateShowsLastState(t *testing.T) {
	n := 0
	msg := run(func(t testing.TB) {
		testwait.ForState(t, "ten rows", func() (bool, string) {
			n++
			return false, fmt.Sprintf("%d rows", n)
		}, testwait.Within(10*time.Millisecond))
	})
	if want := fmt.Sprintf("(%d rows)", n); !strings.Contains(msg, "ten rows") || !strings.HasSuffix(msg, want) {
		t.Fatalf("failure %q, want what and the last state %s", msg, want)
	}
}
