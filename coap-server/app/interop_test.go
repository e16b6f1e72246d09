package app_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// lookTool finds a peer binary we did not write; scripts/test.sh installs
// it (Debian libcoap3-bin). Missing: skipped locally, a failure in CI.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed: scripts/test.sh installs libcoap3-bin", name)
		}
		t.Skipf("%s not installed (apt-get install libcoap3-bin)", name)
	}
	return p
}

// Interop with libcoap: a CoAP stack we did not write posts an uplink from
// a file and gets 2.04, and the uplink reaches the live log.
func TestLibcoapClientPostsUplink(t *testing.T) {
	client := lookTool(t, "coap-client-notls")
	a := startApp(t, nil)
	ws := dialWS(t, a, "?deviceId=LIBCOAP-1")
	temp := float32(-4.25)
	payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "LIBCOAP-1", UplinkCount: 3, Temperature: &temp})
	file := filepath.Join(t.TempDir(), "uplink.bin")
	if err := os.WriteFile(file, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	uri := "coap://127.0.0.1:" + strconv.Itoa(a.CoAPAddr().Port) + "/uplink"
	// -v 6 prints the exchanged messages; -B bounds the wait.
	out, err := exec.CommandContext(ctx, client, "-m", "post", "-t", "42", "-f", file, "-B", "10", "-v", "6", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("coap-client: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "t:ACK c:2.04") {
		t.Fatalf("coap-client did not get an ACK 2.04:\n%s", out)
	}
	m := readFrame(t, ws)
	if m["message"] != "Received uplink #3" || m["data"].(map[string]any)["temperature"] != -4.25 {
		t.Errorf("frame %v", m)
	}
}
