// Command provision creates a device and its DTLS pre-shared key:
//
//	DATABASE_URL=postgresql://... go run ./scripts/provision -device ABC123 [-owner EMAIL|UUID]
//
// It inserts the devices row (owner optional: an auth.users email or id)
// and a random 16-byte PSK in device_credentials, in one transaction, and
// prints the key once, in hex, with the DTLS settings the device needs. The
// key is never stored anywhere else: lose it and provision again with -rotate.
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

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

func main() {
	if err := run(os.Args[1:], os.Getenv("DATABASE_URL"), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "provision:", err)
		os.Exit(1)
	}
}

func run(args []string, dsn string, out io.Writer) error {
	fs := flag.NewFlagSet("provision", flag.ContinueOnError)
	device := fs.String("device", "", "device ID (^[A-Za-z0-9_-]{1,64}$), the DTLS PSK identity")
	owner := fs.String("owner", "", "owner: an auth.users email or UUID (optional)")
	rotate := fs.Bool("rotate", false, "replace the PSK of an existing device")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !livelog.ValidDeviceID(*device) {
		return errors.New("-device: want ^[A-Za-z0-9_-]{1,64}$")
	}
	if dsn == "" {
		return errors.New("DATABASE_URL is required")
	}
	psk := make([]byte, 16)
	if _, err := rand.Read(psk); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var ownerID *uuid.UUID
		if *owner != "" {
			id, err := findOwner(ctx, tx, *owner)
			if err != nil {
				return err
			}
			ownerID = &id
		}
		if _, err := tx.Exec(ctx, `insert into public.devices (devid, owner_id) values ($1, $2)
			on conflict (devid) do update set owner_id = coalesce(excluded.owner_id, devices.owner_id)`, *device, ownerID); err != nil {
			return fmt.Errorf("devices: %w", err)
		}
		q := `insert into public.device_credentials (devid, psk) values ($1, $2)`
		if *rotate {
			q += ` on conflict (devid) do update set psk = excluded.psk, created_at = now()`
		}
		if _, err := tx.Exec(ctx, q, *device, psk); err != nil {
			return fmt.Errorf("device_credentials (use -rotate to replace an existing key): %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, `device %s provisioned. Its PSK is shown once; store it in the device now.

  PSK identity   %s
  PSK (hex)      %s
  server         coaps://<host>:5684/uplink (COAPS_ADDR), POST, Content-Format 42
  DTLS           1.2, PSK; cipher suite TLS_PSK_WITH_AES_128_CCM_8 (or TLS_PSK_WITH_AES_128_GCM_SHA256)
  Connection ID  RFC 9146: send the server's CID (a zero-length one of your own is fine)
  MTU            keep datagrams under 1200 bytes
  device_id      may be left empty in the Uplink: the PSK identity names the device

libcoap test:  coap-client-openssl -m post -t 42 -f uplink.bin -u %s -k "$(echo %s | xxd -r -p)" coaps://<host>:5684/uplink
               (only when the key has no NUL byte; otherwise use a client that takes hex keys)
`, *device, *device, hex.EncodeToString(psk), *device, hex.EncodeToString(psk))
	return nil
}

func findOwner(ctx context.Context, tx pgx.Tx, owner string) (uuid.UUID, error) {
	var id uuid.UUID
	if u, err := uuid.Parse(owner); err == nil {
		err := tx.QueryRow(ctx, `select id from auth.users where id = $1`, u).Scan(&id)
		if err != nil {
			return id, fmt.Errorf("-owner: no auth.users row with that id: %w", err)
		}
		return id, nil
	}
	err := tx.QueryRow(ctx, `select id from auth.users where lower(email) = lower($1)`, owner).Scan(&id)
	if err != nil {
		return id, fmt.Errorf("-owner: no auth.users row with that email: %w", err)
	}
	return id, nil
}
