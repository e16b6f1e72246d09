package dtls_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// libcoap is Debian's coap-client built on OpenSSL (libcoap3-bin, installed
// by scripts/test.sh): an independent DTLS-PSK implementation.
const libcoap = "coap-client-openssl"

func libcoapPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath(libcoap)
	if err != nil {
		t.Fatalf("%s not found (apt-get install libcoap3-bin; scripts/test.sh does): %v", libcoap, err)
	}
	return p
}

// postLibcoap POSTs u to /uplink over DTLS-PSK as identity with key and
// returns the response payload (-o) and the client's output.
func postLibcoap(t testing.TB, port int, identity, key string, u *nbiotv1.Uplink) (payload []byte, out string, err error) {
	t.Helper()
	return postLibcoapWithin(t, port, identity, key, u, 8)
}

// postLibcoapWithin gives up after wait seconds (-B).
func postLibcoapWithin(t testing.TB, port int, identity, key string, u *nbiotv1.Uplink, wait int) (payload []byte, out string, err error) {
	t.Helper()
	dir := t.TempDir()
	in, resp := filepath.Join(dir, "uplink.bin"), filepath.Join(dir, "resp.bin")
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, libcoapPath(t), "-m", "post", "-t", "42", "-f", in, "-o", resp,
		"-u", identity, "-k", key, "-B", fmt.Sprint(wait), fmt.Sprintf("coaps://127.0.0.1:%d/uplink", port))
	o, err := cmd.CombinedOutput()
	payload, _ = os.ReadFile(resp)
	return payload, string(o), err
}

func TestLibcoapRightKeyGetsLiveLog(t *testing.T) {
	f := newFixture(t, nil)
	f.provision(t, "dev-libcoap", []byte("libcoap-secret-0123"))
	ws := f.dialWS(t, "dev-libcoap")

	// device_id empty: the PSK identity names the device.
	_, out, err := postLibcoap(t, f.srv.Addr().Port, "dev-libcoap", "libcoap-secret-0123", &nbiotv1.Uplink{UplinkCount: 7})
	if err != nil {
		t.Fatalf("coap-client: %v\n%s", err, out)
	}
	m, err := readFrame(t, ws, 10*time.Second)
	if err != nil {
		t.Fatalf("no live-log frame: %v (client said %q)", err, out)
	}
	if m["deviceId"] != "dev-libcoap" || m["type"] != "uplink" || m["message"] != "Received uplink #7" {
		t.Errorf("frame %v", m)
	}
	if n := f.store.Len(); n != 1 {
		t.Errorf("%d uplinks enqueued for storage, want 1", n)
	}
	if ok := f.handshakes("ok"); ok != 1 {
		t.Errorf("handshakes ok = %v, want 1", ok)
	}
}

func TestLibcoapWrongKeyGetsNothing(t *testing.T) {
	// pion drops records it cannot decrypt, so a wrong key ends in the
	// handshake timeout rather than an alert: keep it short here.
	f := newFixture(t, func(c *dtls.Config) { c.HandshakeTimeout = 2 * time.Second })
	f.provision(t, "dev-wrong", []byte("the-right-key-0123"))
	ws := f.dialWS(t, "dev-wrong")

	_, out, _ := postLibcoapWithin(t, f.srv.Addr().Port, "dev-wrong", "not-the-right-key", &nbiotv1.Uplink{UplinkCount: 1}, 3)
	testwait.For(t, "a failed handshake", func() bool { return f.handshakes("failed") >= 1 }, testwait.Within(10*time.Second))
	if n := f.store.Len(); n != 0 {
		t.Fatalf("%d uplinks enqueued after a wrong key, want 0 (client said %q)", n, out)
	}
	if ok := f.handshakes("ok"); ok != 0 {
		t.Fatalf("handshakes ok = %v after a wrong key", ok)
	}
	// Nothing reached the live log: the next frame is the right key's.
	if _, out, err := postLibcoap(t, f.srv.Addr().Port, "dev-wrong", "the-right-key-0123", &nbiotv1.Uplink{UplinkCount: 2}); err != nil {
		t.Fatalf("coap-client with the right key: %v\n%s", err, out)
	}
	m, err := readFrame(t, ws, 10*time.Second)
	if err != nil || m["message"] != "Received uplink #2" {
		t.Fatalf("first frame %v (%v), want the right key's uplink #2", m, err)
	}
	if n := f.store.Len(); n != 1 {
		t.Errorf("%d uplinks enqueued, want 1", n)
	}
}

func TestLibcoapUnknownIdentityIsCachedNegative(t *testing.T) {
	// An unknown identity fails like a wrong key (decoy): by the handshake
	// timeout, kept short here.
	f := newFixture(t, func(c *dtls.Config) { c.HandshakeTimeout = 2 * time.Second })
	for i := 1; i <= 2; i++ {
		_, _, _ = postLibcoapWithin(t, f.srv.Addr().Port, "no-such-device", "whatever-key-0123", &nbiotv1.Uplink{UplinkCount: 1}, 3)
		testwait.For(t, "a failed handshake", func() bool { return f.handshakes("failed") >= float64(i) }, testwait.Within(10*time.Second))
	}
	if got := lookups(f, "unknown"); got != 1 {
		t.Errorf("database lookups for the unknown identity = %v, want 1", got)
	}
	if got := lookups(f, "miss_cached"); got < 1 {
		t.Errorf("negative cache hits = %v, want >= 1", got)
	}
	if n := f.store.Len(); n != 0 {
		t.Errorf("%d uplinks enqueued, want 0", n)
	}
}
