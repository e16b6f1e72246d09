package stream

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// openStoring opens an engine with storage on the nats-server at url and
// its UplinkSource.
func openStoring(t *testing.T, url string) (*Engine, *UplinkSource) {
	t.Helper()
	e := openEmbedded(t, Config{URL: url, Storage: true})
	src, err := e.UplinkSource(context.Background(), prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	return e, src
}

// storesAgain checks that an uplink published now is accepted and reaches
// the UplinkSource opened before, and that the live log takes entries.
func storesAgain(t *testing.T, e *Engine, src *UplinkSource, count uint32) {
	t.Helper()
	ctx := context.Background()
	a, payload := accepted(t, "AGAIN", count)
	if err := e.PublishUplink(ctx, a, payload); err != nil {
		t.Fatalf("publish: %v", err)
	}
	testwait.ForState(t, "the uplink fetched by the storage consumer", func() (bool, string) {
		ds, err := src.Fetch(ctx, 10, 200*time.Millisecond)
		for _, d := range ds {
			_ = d.Ack()
			if d.Accepted.ID == a.ID {
				return true, ""
			}
		}
		return false, strconv.Itoa(len(ds)) + " others, " + errString(err)
	}, testwait.Within(15*time.Second))
	if _, _, err := e.LogJSON(ctx, "AGAIN", []byte(`{"deviceId":"AGAIN"}`), ""); err != nil {
		t.Fatalf("live log: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// A stream or the storage consumer deleted on the running server: the
// watcher creates it again within checkEvery, and the engine then stores
// uplinks through the UplinkSource it had.
func TestDeletedStreamsAreCreatedAgain(t *testing.T) {
	ns := natstest.Start(t)
	for _, tc := range []struct {
		name   string
		delete func(js jetstream.JetStream) error
	}{
		{"consumer", func(js jetstream.JetStream) error {
			return js.DeleteConsumer(context.Background(), UplinksStream, StorageConsumer)
		}},
		{"UPLINKS", func(js jetstream.JetStream) error { return js.DeleteStream(context.Background(), UplinksStream) }},
		{"both streams", func(js jetstream.JetStream) error {
			return errors.Join(js.DeleteStream(context.Background(), UplinksStream), js.DeleteStream(context.Background(), LiveLogStream))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, src := openStoring(t, ns.URL)
			defer func() { _ = e.js.DeleteStream(context.Background(), UplinksStream) }()
			if !e.Ready() {
				t.Fatal("not ready after Open")
			}
			storesAgain(t, e, src, 1)
			if err := tc.delete(e.js); err != nil {
				t.Fatal(err)
			}
			if err := e.check(); !missing(err) {
				t.Fatalf("check with %s deleted: %v, want it missing", tc.name, err)
			}
			// The watcher finds it within checkEvery and creates it again.
			testwait.ForState(t, "created again", func() (bool, string) {
				err := e.check()
				return err == nil, errString(err)
			}, testwait.Within(10*time.Second))
			if !e.Ready() {
				t.Fatal("created again, but not ready")
			}
			storesAgain(t, e, src, 2)
		})
	}
}

// NATS_URL comes back without the streams: first without JetStream at
// all (not ready, and staying so while nothing can be created), then with
// JetStream and an empty store (a node restarted without its volume): the
// engine creates the streams and the consumer again, is ready, and its
// uplinks are stored. Before, it stayed "connected" and refused every
// uplink for good.
func TestNATSBackWithoutItsStreams(t *testing.T) {
	p := natstest.Start(t)
	e, src := openStoring(t, p.URL)
	storesAgain(t, e, src, 1)

	p.RestartOn(t, "") // the same address, no JetStream
	testwait.For(t, "reconnected", e.Connected, testwait.Within(15*time.Second))
	for deadline := time.Now().Add(3 * checkEvery); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if e.Ready() {
			t.Fatal("ready, connected to a NATS without JetStream")
		}
	}
	a, payload := accepted(t, "AGAIN", 9)
	if err := e.PublishUplink(context.Background(), a, payload); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("publish without JetStream: %v, want ErrUnavailable", err)
	}

	p.RestartOn(t, t.TempDir()) // JetStream, an empty store
	testwait.For(t, "ready with the streams created again", e.Ready, testwait.Within(20*time.Second))
	for _, name := range []string{LiveLogStream, UplinksStream} {
		if _, err := e.js.Stream(context.Background(), name); err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
	}
	storesAgain(t, e, src, 2)
}

// With NATS_URL, LogAsync publishes whose acknowledgement never comes
// (here: a silent subscriber on the subjects in place of the deleted
// LIVELOG, standing in for replies lost in a leader change) are given up
// after AckTimeout and counted; once the stream answers again, LogAsync
// works. Before, 4,000 of them filled the publisher's pending for good.
func TestLogAsyncRecoversFromLostAcks(t *testing.T) {
	ns := natstest.Start(t)
	ctx := context.Background()
	e := openEmbedded(t, Config{URL: ns.URL, AckTimeout: 500 * time.Millisecond})
	// The watcher would create LIVELOG again at once: stop it.
	e.stopWatch()
	<-e.watched
	if err := e.js.DeleteStream(ctx, LiveLogStream); err != nil {
		t.Fatal(err)
	}
	other, err := nats.Connect(ns.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	sub, err := other.Subscribe(liveSubject+">", func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	_ = other.Flush()
	for range 4000 {
		e.LogAsync(livelog.Error("DEV", time.Now(), "x"))
	}
	_ = sub.Unsubscribe()
	_ = other.Flush()
	testwait.ForState(t, "the unanswered publishes given up and counted", func() (bool, string) {
		n := e.AsyncErrors()
		return n == 4000, strconv.FormatInt(n, 10)
	}, testwait.Within(10*time.Second))
	if _, _, err := e.ensure(ctx); err != nil {
		t.Fatal(err)
	}
	before := e.AsyncErrors()
	for range 100 {
		e.LogAsync(livelog.Error("DEV", time.Now(), "y"))
	}
	testwait.ForState(t, "100 entries in LIVELOG", func() (bool, string) {
		info, err := e.live.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return info.State.Msgs == 100, strconv.FormatUint(info.State.Msgs, 10)
	}, testwait.Within(10*time.Second))
	if failed := e.AsyncErrors() - before; failed != 0 {
		t.Fatalf("%d of 100 LogAsync entries failed after the stream answered again", failed)
	}
}

// The embedded server is one node: NATS_REPLICAS above 1 without NATS_URL
// is refused at validation, by name (it failed at start naming DATA_DIR).
func TestEmbeddedRefusesReplicas(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	var c Config
	if err := c.FromEnv(env(map[string]string{"NATS_REPLICAS": "3"})); err == nil || !strings.HasPrefix(err.Error(), "NATS_REPLICAS") {
		t.Errorf("NATS_REPLICAS=3 without NATS_URL: %v, want an error naming NATS_REPLICAS", err)
	}
	c = Config{URL: "nats://127.0.0.1:4222"}
	if err := c.FromEnv(env(map[string]string{"NATS_REPLICAS": "3"})); err != nil || c.Replicas != 3 {
		t.Errorf("NATS_REPLICAS=3 with NATS_URL: %v, replicas %d", err, c.Replicas)
	}
	c = Config{}
	if err := c.FromEnv(env(map[string]string{"NATS_REPLICAS": "1"})); err != nil {
		t.Errorf("NATS_REPLICAS=1 without NATS_URL: %v", err)
	}
	_, err := Open(context.Background(), Config{DataDir: t.TempDir(), Storage: true, Replicas: 3})
	if err == nil || !strings.HasPrefix(err.Error(), "NATS_REPLICAS") || strings.Contains(err.Error(), "\n") {
		t.Errorf("Open embedded with 3 replicas: %v, want one line naming NATS_REPLICAS", err)
	}
}

// The embedded server's JetStream stops (as on a storage failure): the
// engine is not ready.
func TestEmbeddedNotReadyWithoutJetStream(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	if !e.Ready() {
		t.Fatal("not ready after Open")
	}
	if err := e.ns.DisableJetStream(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "not ready", func() bool { return !e.Ready() }, testwait.Within(3*checkEvery))
}
