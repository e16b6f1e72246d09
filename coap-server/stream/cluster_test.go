package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// TestClusterOfThreeLosesNoAcceptedUplink: on the deployment the README
// recommends past one machine, a JetStream cluster of three (Debian's
// nats-server) with NATS_REPLICAS=3, the streams are made with three
// replicas, and killing the node that leads UPLINKS while uplinks are
// being published loses none that was accepted (PublishUplink returned
// nil: the device got 2.04). Publishes during the election may be refused
// (5.03, the device retries); after it they are accepted again.
func TestClusterOfThreeLosesNoAcceptedUplink(t *testing.T) {
	nodes, url := natstest.StartCluster(t, 3)
	e := openEmbedded(t, Config{URL: url, Storage: true, Replicas: 3})
	ctx := context.Background()
	for _, name := range []string{LiveLogStream, UplinksStream, AsideStream} {
		s, err := e.js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("stream %s has %d replicas, want 3", name, r)
		}
	}

	// The storage consumer is bound at start, as coap-server does: looked
	// up after the kill, it may be electing its own leader.
	src, err := e.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	src.nextAside = time.Now().Add(time.Hour)

	acc := map[uuid.UUID]bool{}
	refused := 0
	publish := func(i int) error {
		a, payload := accepted(t, fmt.Sprintf("DEV%d", i%10), uint32(i))
		err := e.PublishUplink(ctx, a, payload)
		if err == nil {
			acc[a.ID] = true
		} else {
			refused++
		}
		return err
	}
	// Each may be refused (an acknowledgement past AckTimeout on a busy
	// machine); what matters is that none accepted is lost.
	next := 0
	acceptN := func(n int, what string) {
		t.Helper()
		want := len(acc) + n
		testwait.For(t, fmt.Sprintf("%d uplinks accepted %s", n, what), func() bool {
			next++
			_ = publish(next)
			return len(acc) >= want
		}, testwait.Within(60*time.Second))
	}
	acceptN(200, "before any node was lost")
	s, err := e.js.Stream(ctx, UplinksStream)
	if err != nil {
		t.Fatal(err)
	}
	leader := s.CachedInfo().Cluster.Leader
	killed, killedAt := false, time.Now()
	for i, n := range nodes {
		if "n"+fmt.Sprint(i) == leader {
			n.Stop() // kill -9
			killed = true
		}
	}
	if !killed {
		t.Fatalf("UPLINKS' leader %q is none of the nodes", leader)
	}
	for range 200 {
		next++
		_ = publish(next) // during the election: accepted or refused
	}
	testwait.For(t, "uplinks accepted again after the leader was lost", func() bool {
		next++
		return publish(next) == nil
	}, testwait.Within(60*time.Second))
	back := time.Since(killedAt)
	acceptN(100, "after the election")
	t.Logf("%d uplinks accepted, %d refused while UPLINKS elected a leader; accepted again %v after the kill", len(acc), refused, back.Round(time.Millisecond))

	left := len(acc)
	deadline := time.Now().Add(60 * time.Second)
	for left > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d accepted uplinks never delivered", left, len(acc))
		}
		ds, err := src.Fetch(ctx, 500, 200*time.Millisecond)
		if err != nil {
			t.Logf("fetch: %v", err) // the storage connection may be moving to another node
			continue
		}
		for _, d := range ds {
			if acc[d.Accepted.ID] {
				acc[d.Accepted.ID] = false
				left--
			}
			if err := d.Ack(); err != nil {
				t.Logf("ack: %v", err)
			}
		}
	}
}
