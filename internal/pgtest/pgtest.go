// Package pgtest gives tests a private database with the real migrations.
//
// scripts/test.sh starts a throwaway Postgres, pushes supabase/migrations
// into the database "nbiot" with `supabase db push`, and exports its URL as
// TEST_DATABASE_URL. NewDB clones that database (CREATE DATABASE … TEMPLATE)
// so every test gets the real schema, roles and policies, and no other
// test's rows. Without TEST_DATABASE_URL a test is skipped locally and fails
// when CI=true: CI never skips.
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TemplateURL returns TEST_DATABASE_URL (the migrated template database), or
// skips the test (fails it under CI=true) when it is not set.
func TemplateURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("TEST_DATABASE_URL")
	if u == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("TEST_DATABASE_URL is not set: run the tests with scripts/test.sh")
		}
		t.Skip("TEST_DATABASE_URL is not set: run scripts/test.sh for the database tests")
	}
	return u
}

var seq atomic.Int64

// NewDB creates a database cloned from the migrated template, drops it when
// the test ends, and returns its superuser URL.
func NewDB(t testing.TB) string {
	t.Helper()
	tmpl := TemplateURL(t)
	u, err := url.Parse(tmpl)
	if err != nil {
		t.Fatalf("TEST_DATABASE_URL: %v", err)
	}
	template := strings.TrimPrefix(u.Path, "/")
	name := fmt.Sprintf("t_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, seq.Add(1))
	admin := *u
	admin.Path = "/postgres"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin.String())
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	// Two clones of one template at the same instant can collide ("source
	// database is being accessed by other users"); retry briefly.
	for attempt := 0; ; attempt++ {
		_, err = conn.Exec(ctx, fmt.Sprintf("create database %s template %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{template}.Sanitize()))
		if err == nil || attempt == 50 || !strings.Contains(err.Error(), "being accessed") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin.String())
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, fmt.Sprintf("drop database if exists %s with (force)", pgx.Identifier{name}.Sanitize()))
	})
	db := *u
	db.Path = "/" + name
	return db.String()
}
