package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"regexp"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

func TestProvisionCreatesDeviceAndPrintsKeyOnce(t *testing.T) {
	dsn := pgtest.NewDB(t)
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
	if err := run([]string{"-device", "prov-1", "-owner", "ops@example.com"}, dsn, &out); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`PSK \(hex\)\s+([0-9a-f]{32})\n`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no hex PSK in output:\n%s", out.String())
	}
	var psk []byte
	var gotOwner string
	if err := conn.QueryRow(ctx, `select c.psk, d.owner_id::text from public.device_credentials c join public.devices d using (devid) where devid = 'prov-1'`).Scan(&psk, &gotOwner); err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(psk) != m[1] || gotOwner != owner {
		t.Errorf("stored psk %x owner %s; printed %s, owner %s", psk, gotOwner, m[1], owner)
	}
	// A second run does not silently replace the key; -rotate does.
	if err := run([]string{"-device", "prov-1"}, dsn, &out); err == nil {
		t.Error("second provisioning replaced the key without -rotate")
	}
	if err := run([]string{"-device", "prov-1", "-rotate"}, dsn, &out); err != nil {
		t.Errorf("rotate: %v", err)
	}
	if err := run([]string{"-device", "bad id"}, dsn, &out); err == nil {
		t.Error("invalid device ID accepted")
	}
}
