package fakepostgrest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// TestMaxRowsCapsReads: like PostgREST's db-max-rows (Supabase's "Max
// rows", 1000 by default), a GET returns at most MaxRows rows whether it
// asks for fewer, more or no limit; a smaller limit still applies; writes
// are not capped.
func TestMaxRowsCapsReads(t *testing.T) {
	db := pgtest.NewDB(t)
	opts := options
	opts.MaxRows = 3
	srv := fakepostgrest.Start(t, db, opts)
	e := &env{t: t, url: srv.URL, db: db}
	rows := "["
	for i := range 5 {
		if i > 0 {
			rows += ","
		}
		rows += fmt.Sprintf(`{"devid":"MAXROWS%d"}`, i)
	}
	rows += "]"
	h := map[string]string{"apikey": sbSec, "Content-Type": "application/json", "Prefer": "return=representation"}
	status, body := e.do(http.MethodPost, "/rest/v1/devices", h, rows)
	if status != http.StatusCreated || count(t, body) != 5 {
		t.Fatalf("insert of 5: %d %s", status, body)
	}
	for query, want := range map[string]int{
		"":                           3,
		"&limit=100":                 3,
		"&limit=2":                   2,
		"&limit=3&offset=3":          2,
		"&devid=eq.MAXROWS4":         1,
		"&order=devid.desc":          3,
		"&devid=gt.MAXROWS1&limit=3": 3,
	} {
		status, body := e.do(http.MethodGet, "/rest/v1/devices?select=devid"+query, map[string]string{"apikey": sbSec}, "")
		if status != http.StatusOK || count(t, body) != want {
			t.Errorf("GET %q: %d, %d rows, want %d (%s)", query, status, count(t, body), want, body)
		}
	}
}

func count(t *testing.T, body []byte) int {
	t.Helper()
	var rows []json.RawMessage
	if err := json.Unmarshal(body, &rows); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return len(rows)
}
