package app_test

import (
	"context"
	"net"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// handshakeErr runs one bare DTLS handshake as device and returns its
// error (nil: the server accepted the key).
func handshakeErr(t *testing.T, e *secureEnv, device string, psk []byte, within time.Duration) error {
	t.Helper()
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	dc, err := piondtls.ClientWithOptions(sock, e.app.CoAPSAddr(),
		piondtls.WithPSK(func([]byte) ([]byte, error) { return psk, nil }),
		piondtls.WithPSKIdentityHint([]byte(device)),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return dc.HandshakeContext(ctx)
}

// The whole app, both storage modes: deleting a device's credential ends
// its open CoAPS session and refuses its next handshake (Postgres and REST
// keys are re-read every 2 s; the time taken is logged, 15 s allowed).
func TestDeletedCredentialEndsTheWholeAppSession(t *testing.T) {
	for _, mode := range []string{app.StoragePostgres, app.StorageREST} {
		t.Run(mode, func(t *testing.T) {
			e := startSecureApp(t, mode)
			const dev = "trust-revoked"
			psk := e.provision(t, dev)
			cc := dialDevice(t, e, dev, psk)
			if code, _ := postSecure(t, cc, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
				t.Fatalf("uplink: %v", code)
			}
			if _, err := e.pool.Exec(context.Background(), `delete from public.device_credentials where devid = $1`, dev); err != nil {
				t.Fatal(err)
			}
			deleted := time.Now()
			select {
			case <-cc.Done():
				t.Logf("the session ended %v after its credential was deleted", time.Since(deleted))
			case <-time.After(15 * time.Second):
				t.Fatal("the session is still open 15 s after its credential was deleted")
			}
			if err := handshakeErr(t, e, dev, psk, 3*time.Second); err == nil {
				t.Fatal("a deleted credential still completes a handshake")
			}
		})
	}
}
