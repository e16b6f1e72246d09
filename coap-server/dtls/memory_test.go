package dtls

import "testing"

func TestSessionsFor(t *testing.T) {
	if n := SessionsFor(ReferenceMemory); n != 3912 {
		t.Errorf("sessions on 512 MiB = %d, want 3912 (half of 536870912 bytes / 68608)", n)
	}
	if n := SessionsFor(1); n != 1 {
		t.Errorf("sessions on 1 byte = %d, want 1", n)
	}
}
