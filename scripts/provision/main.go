// Command provision gives a device an owner and, for CoAPS, a DTLS
// pre-shared key:
//
//	DATABASE_URL=postgresql://... go run ./scripts/provision -device ABC123 [-owner EMAIL|UUID]
//	SUPABASE_URL=https://<ref>.supabase.co SUPABASE_SERVICE_KEY=... go run ./scripts/provision -device ABC123 [-owner UUID]
//
// It upserts the devices row (a device that has already reported keeps its
// row; -owner sets its owner, an auth.users email or id) and, unless
// -no-psk, inserts a random 16-byte PSK in device_credentials, and prints
// the key once, in hex, with the DTLS settings the device needs. The key is
// never stored anywhere else: lose it and provision again with -rotate.
//
// Like coap-server, it writes with DATABASE_URL when set (one transaction),
// else through Supabase REST with the service key (a service_role JWT or an
// sb_secret_ key, checked by the same rule as coap-server's REST writer;
// two requests, the devices row first). Over REST, -owner must be the
// user's UUID: Supabase does not expose auth.users to REST.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "provision:", err)
		os.Exit(1)
	}
}

// request is one provisioning: what the flags asked for.
type request struct {
	device string
	owner  string // email or UUID; empty keeps the current owner
	psk    []byte // nil with -no-psk
	rotate bool
}

// store writes a request: the devices row, then the key when there is one.
type store interface {
	provision(ctx context.Context, r request) error
	close()
}

// errKeyExists is returned when the device has a key and -rotate was not given.
var errKeyExists = errors.New("device_credentials: the device already has a key (use -rotate to replace it)")

func run(args []string, getenv func(string) string, out io.Writer) error {
	fs := flag.NewFlagSet("provision", flag.ContinueOnError)
	device := fs.String("device", "", "device ID (^[A-Za-z0-9_-]{1,64}$), the DTLS PSK identity")
	owner := fs.String("owner", "", "owner: an auth.users email or UUID (UUID only over REST); empty keeps the current owner")
	rotate := fs.Bool("rotate", false, "replace the PSK of an existing device")
	noPSK := fs.Bool("no-psk", false, "only create the device row and set its owner: no DTLS key (plain CoAP devices)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !livelog.ValidDeviceID(*device) {
		return errors.New("-device: want ^[A-Za-z0-9_-]{1,64}$")
	}
	if *noPSK && *rotate {
		return errors.New("-rotate and -no-psk: pick one")
	}
	r := request{device: *device, owner: *owner, rotate: *rotate}
	if !*noPSK {
		r.psk = make([]byte, 16)
		if _, err := rand.Read(r.psk); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := openStore(ctx, getenv)
	if err != nil {
		return err
	}
	defer st.close()
	if err := st.provision(ctx, r); err != nil {
		return err
	}
	if r.psk == nil {
		fmt.Fprintf(out, "device %s provisioned (no DTLS key)%s.\n", r.device, ownerNote(r.owner))
		return nil
	}
	key := hex.EncodeToString(r.psk)
	fmt.Fprintf(out, `device %s provisioned%s. Its PSK is shown once; store it in the device now.

  PSK identity   %s
  PSK (hex)      %s
  server         coaps://<host>:5684/uplink (COAPS_ADDR), POST, Content-Format 42
  DTLS           1.2, PSK; cipher suite TLS_PSK_WITH_AES_128_CCM_8 (or TLS_PSK_WITH_AES_128_GCM_SHA256)
  Connection ID  RFC 9146: send the server's CID (a zero-length one of your own is fine)
  MTU            keep datagrams under 1200 bytes
  device_id      may be left empty in the Uplink: the PSK identity names the device

libcoap test:  coap-client-openssl -m post -t 42 -f uplink.bin -u %s -k "$(echo %s | xxd -r -p)" coaps://<host>:5684/uplink
               (only when the key has no NUL byte; otherwise use a client that takes hex keys)
`, r.device, ownerNote(r.owner), r.device, key, r.device, key)
	return nil
}

func ownerNote(owner string) string {
	if owner == "" {
		return ""
	}
	return ", owner " + owner
}

// openStore picks the writer the way coap-server does: DATABASE_URL wins,
// else SUPABASE_URL with SUPABASE_SERVICE_KEY.
func openStore(ctx context.Context, getenv func(string) string) (store, error) {
	if dsn := getenv("DATABASE_URL"); dsn != "" {
		return openPostgres(ctx, dsn)
	}
	if u := getenv("SUPABASE_URL"); u != "" {
		return newREST(u, getenv("SUPABASE_SERVICE_KEY"))
	}
	return nil, errors.New("DATABASE_URL, or SUPABASE_URL with SUPABASE_SERVICE_KEY, is required")
}
