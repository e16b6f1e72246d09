package stream

import (
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/natstest"
)

// A hosted NATS account with less JetStream file storage than the
// streams' bounds: the start is one line that says what the streams ask
// for, what the account may keep, and what to change. Before, it ended
// with the server's bare "insufficient storage resources available".
func TestNATSAccountWithoutRoom(t *testing.T) {
	op := natstest.NewOperatorWithStorage(t, 200<<20)
	srv := natstest.StartWith(t, op.Conf)
	cfg := Config{URL: srv.URL, Creds: op.Creds, Storage: true}
	for _, tc := range []struct {
		live, uplinks int64
		want          []string
	}{
		// The defaults: LIVELOG alone (256 MiB) is past the 200 MiB.
		{0, 0, []string{"NATS_URL: stream LIVELOG: ", "the streams may hold 800 MiB (UPLINKS_MAX_BYTES 512 MiB",
			"the NATS account may keep 200 MiB of JetStream file storage, 0 MiB of it reserved already",
			"lower UPLINKS_MAX_BYTES or LIVELOG_MAX_BYTES, or raise the account's limit"}},
		// LIVELOG fits, and is counted when UPLINKS does not.
		{64 << 20, 256 << 20, []string{"NATS_URL: stream UPLINKS: ", "the streams may hold 336 MiB",
			"may keep 200 MiB of JetStream file storage, 64 MiB of it reserved already"}},
	} {
		c := cfg
		c.LiveBytes, c.UplinksBytes = tc.live, tc.uplinks
		msg := refused(t, c)
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("LIVELOG %d, UPLINKS %d: %q\nwant it to hold %q", tc.live, tc.uplinks, msg, w)
			}
		}
	}
	cfg.LiveBytes, cfg.UplinksBytes = 64<<20, 96<<20 // 166 MiB with UPLINKS_UNREADABLE's 6
	logsOne(t, cfg)
}

// A NATS server whose own store is smaller than the streams' bounds (its
// max_file_store), the account unlimited: the line says so.
func TestNATSServerWithoutRoom(t *testing.T) {
	srv := natstest.StartWith(t, "jetstream {\n  max_file_store: 104857600\n}\n")
	msg := refused(t, Config{URL: srv.URL, ConnectTimeout: 5 * time.Second})
	for _, w := range []string{"NATS_URL: stream LIVELOG: ", "insufficient storage resources available",
		"the streams may hold 256 MiB on each replica (LIVELOG_MAX_BYTES 256 MiB), more than a NATS server has room for",
		"max_file_store"} {
		if !strings.Contains(msg, w) {
			t.Errorf("%q\nwant it to hold %q", msg, w)
		}
	}
}

// A NATS without JetStream (nats-server without -js, or an account without
// it): the start says so, instead of nats.go's bare "no responders
// available for request".
func TestNATSWithoutJetStream(t *testing.T) {
	srv := natstest.Start(t)
	srv.RestartOn(t, "") // no store: no -js
	msg := refused(t, Config{URL: srv.URL, ConnectTimeout: 5 * time.Second})
	for _, w := range []string{"NATS_URL: stream LIVELOG: ", "has no JetStream for this account", "-js"} {
		if !strings.Contains(msg, w) {
			t.Errorf("%q\nwant it to hold %q", msg, w)
		}
	}
}
