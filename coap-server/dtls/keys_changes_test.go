package dtls

import (
	"fmt"
	"testing"
)

// A changeLog tells a change of the identity asked about from others, and
// once it has forgotten changes after a mark it answers "changed" for any
// identity it no longer remembers: never a wrong "unchanged".
func TestChangeLogForgetsOnTheSafeSide(t *testing.T) {
	c := changeLog{last: make(map[string]uint64)}
	mark := c.seq
	c.record("a")
	if !c.since("a", mark) || c.since("b", mark) {
		t.Fatalf("after a change of a: since(a) %v, since(b) %v; want true, false", c.since("a", mark), c.since("b", mark))
	}
	if c.since("a", c.seq) {
		t.Fatal("since(a) from after its change: true")
	}
	mark = c.seq
	for i := range maxChanges {
		c.record(fmt.Sprint("other", i))
	}
	if len(c.last) != maxChanges || len(c.ring) != maxChanges {
		t.Fatalf("remembered %d identities in %d changes, want %d", len(c.last), len(c.ring), maxChanges)
	}
	if c.since("a", mark) {
		t.Error("a's change was before the mark and only it was forgotten: since(a) true")
	}
	c.record("more")
	if !c.since("a", mark) {
		t.Error("a change after the mark was forgotten, and since(a) said no")
	}
	if !c.since("more", c.seq-1) || c.since("more", c.seq) {
		t.Error("since(more) is wrong around its own change")
	}
}
