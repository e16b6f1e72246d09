package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// An external NATS reserves each stream's MaxBytes when it is created or
// raised, against the account's JetStream file storage limit (a hosted
// NATS sells it by the GiB) and each server's own (max_file_store). Past
// either, it refuses the stream with its bare "insufficient storage
// resources available", which names neither what asked for the room nor
// what to change. ensureHint says both; it names JetStream when the server
// answers nothing at all ("no responders": a nats-server without -js, or
// an account without JetStream), and the user's permissions when the
// server refused it a subject meanwhile (refused.go: the JetStream API's
// requests then simply time out).

// errCodeNoRoom is JetStream's "insufficient storage resources available".
const errCodeNoRoom jetstream.ErrorCode = 10047

// ensureHint adds to err what ensure's failure means and what to change:
// the user's permissions, JetStream to turn on, or the room the streams
// ask for against what the account may keep. Other errors it returns as
// they are.
func (e *Engine) ensureHint(ctx context.Context, err error) error {
	if e.ns != nil {
		return err // embedded: storeFits said it at start
	}
	if e.permErrors.Load() > 0 { // the JetStream API's requests went unanswered
		return fmt.Errorf("%w: the server refused coap-server's NATS user a subject; it needs to %s", err, userPermissions)
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w: the NATS server at NATS_URL has no JetStream for this account: "+
			"run nats-server with -js (a cluster's every node), or give the account JetStream (its limits)", err)
	}
	var api *jetstream.APIError
	if !errors.As(err, &api) || api.ErrorCode != errCodeNoRoom {
		return err
	}
	c := e.cfg
	need, asked := c.storeBytes(), c.boundsText()
	info, ierr := e.js.AccountInfo(ctx)
	if ierr != nil {
		return fmt.Errorf("%w: the streams may hold %d MiB on each replica (%s): lower UPLINKS_MAX_BYTES or LIVELOG_MAX_BYTES, "+
			"or give the NATS account or servers more JetStream file storage", err, need/mib, asked)
	}
	// A tiered account (per replica count, as hosted NATS sells them)
	// counts one copy against the tier; an untiered one every replica.
	tier, copies := info.Tier, int64(c.Replicas)
	if t, ok := info.Tiers["R"+strconv.Itoa(c.Replicas)]; ok {
		tier, copies = t, 1
	}
	if limit := tier.Limits.MaxStore; limit >= 0 {
		reserved := e.reserved(ctx, copies == 1)
		of := ""
		if copies > 1 {
			of = fmt.Sprintf(", %d MiB for its %d replicas", need*copies/mib, copies)
		}
		return fmt.Errorf("%w: the streams may hold %d MiB (%s%s), and the NATS account may keep %d MiB of JetStream file storage, "+
			"%d MiB of it reserved already: lower UPLINKS_MAX_BYTES or LIVELOG_MAX_BYTES, or raise the account's limit",
			err, need/mib, asked, of, limit/mib, reserved/mib)
	}
	return fmt.Errorf("%w: the streams may hold %d MiB on each replica (%s), more than a NATS server has room for: "+
		"lower UPLINKS_MAX_BYTES or LIVELOG_MAX_BYTES, or give the servers more (max_file_store, their disks)", err, need/mib, asked)
}

// reserved is what the account's file streams reserve: their MaxBytes,
// once (a tier) or for each replica. The account's own report of it is
// zero on a server outside a cluster.
func (e *Engine) reserved(ctx context.Context, once bool) int64 {
	var n int64
	streams := e.js.ListStreams(ctx)
	for s := range streams.Info() {
		if c := s.Config; c.Storage == jetstream.FileStorage && c.MaxBytes > 0 {
			if once {
				n += c.MaxBytes
			} else {
				n += c.MaxBytes * int64(max(c.Replicas, 1))
			}
		}
	}
	return n
}
