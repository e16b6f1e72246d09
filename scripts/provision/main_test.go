package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// envOf is a getenv over a fixed map.
func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// printedPSK is the hex key in provision's output.
func printedPSK(t *testing.T, out string) string {
	t.Helper()
	m := regexp.MustCompile(`PSK \(hex\)\s+([0-9a-f]{32})\n`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no hex PSK in output:\n%s", out)
	}
	return m[1]
}

func TestProvisionCreatesDeviceAndPrintsKeyOnce(t *testing.T) {
	dsn := pgtest.NewDB(t)
	env := envOf(map[string]string{"DATABASE_URL": dsn})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var owner string
	if err := conn.QueryRow(ctx, `insert into auth.users (email) values ('Ops@Example.com') returning id::text`).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run([]string{"-device", "prov-1", "-owner", "ops@example.com"}, env, &out); err != nil {
		t.Fatal(err)
	}
	printed := printedPSK(t, out.String())
	var psk []byte
	var gotOwner string
	if err := conn.QueryRow(ctx, `select c.psk, d.owner_id::text from public.device_credentials c join public.devices d using (devid) where devid = 'prov-1'`).Scan(&psk, &gotOwner); err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(psk) != printed || gotOwner != owner {
		t.Errorf("stored psk %x owner %s; printed %s, owner %s", psk, gotOwner, printed, owner)
	}
	// A second run does not silently replace the key; -rotate does.
	if err := run([]string{"-device", "prov-1"}, env, &out); !errors.Is(err, errKeyExists) {
		t.Errorf("second provisioning without -rotate: %v, want errKeyExists", err)
	}
	if err := run([]string{"-device", "prov-1", "-rotate"}, env, &out); err != nil {
		t.Errorf("rotate: %v", err)
	}
	if err := run([]string{"-device", "bad id"}, env, &out); err == nil {
		t.Error("invalid device ID accepted")
	}
	if err := run([]string{"-device", "prov-1"}, envOf(nil), &out); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Errorf("no database configured: %v", err)
	}
}

// TestProvisionClaimsSeenDevice: -no-psk gives a device that already
// reported (its row made by coap-server, no owner) an owner, and no key,
// which is what a plain-CoAP device needs to show in its owner's page.
func TestProvisionClaimsSeenDevice(t *testing.T) {
	dsn := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var owner string
	if err := conn.QueryRow(ctx, `insert into auth.users (email) values ('owner@example.com') returning id::text`).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `insert into public.devices (devid, last_seen_at) values ('seen-1', now())`); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run([]string{"-device", "seen-1", "-owner", owner, "-no-psk"}, envOf(map[string]string{"DATABASE_URL": dsn}), &out); err != nil {
		t.Fatal(err)
	}
	assertClaimed(t, conn, "seen-1", owner)
	if strings.Contains(out.String(), "PSK") {
		t.Errorf("-no-psk printed a key:\n%s", out.String())
	}
}

// assertClaimed checks the device's owner, that it kept last_seen_at, and
// that it has no key.
func assertClaimed(t *testing.T, conn *pgx.Conn, device, owner string) {
	t.Helper()
	var gotOwner string
	var seen bool
	var keys int
	err := conn.QueryRow(context.Background(), `select d.owner_id::text, d.last_seen_at is not null,
		(select count(*) from public.device_credentials c where c.devid = d.devid)
		from public.devices d where devid = $1`, device).Scan(&gotOwner, &seen, &keys)
	if err != nil {
		t.Fatal(err)
	}
	if gotOwner != owner || !seen || keys != 0 {
		t.Errorf("%s: owner %s (want %s), last_seen_at kept %v, keys %d (want 0)", device, gotOwner, owner, seen, keys)
	}
}
