// Package fakepostgrest is a small stand-in for Supabase's REST endpoint
// (Kong in front of PostgREST) for tests. No PostgREST binary can be
// installed on these machines (docs/pitfalls.md#postgrest-go), so this server applies requests the
// way PostgREST does, on the REAL migrated Postgres, so that a column, type,
// privilege or policy mismatch fails a test exactly as it would in
// production.
//
// Use:
//
//	srv := fakepostgrest.Start(t, pgtest.NewDB(t), fakepostgrest.Options{
//		JWTSecret: []byte("…"), SecretKey: "sb_secret_…", PublishableKey: "sb_publishable_…"})
//	// SUPABASE_URL = srv.URL; tables are at srv.URL + "/rest/v1/<table>".
//	token := fakepostgrest.SignJWT(t, secret, map[string]any{"role": "authenticated", "sub": uid})
//
// What it reproduces:
//   - Auth as Supabase's gateway + PostgREST do it: the `apikey` header is
//     required (401 without it). An `Authorization: Bearer` JWT (HS256 with
//     Options.JWTSecret; exp checked) chooses the role from its `role` claim
//     (anon when absent); a bad or non-JWT bearer is 401 PGRST301. Without a
//     bearer, the apikey alone decides: Options.SecretKey (sb_secret_…) is
//     service_role, Options.PublishableKey (sb_publishable_…) is anon, a
//     legacy JWT apikey is verified and its role used. Only the roles anon,
//     authenticated and service_role are accepted.
//   - Each request runs in one transaction after
//     `set_config('role', <role>, true)` and
//     `set_config('request.jwt.claims', <claims json>, true)`, as PostgREST
//     does, so grants and RLS policies (auth.uid()) apply for real.
//   - POST /rest/v1/<table>: a JSON object or array inserted through
//     `json_populate_recordset(null::public.<table>, $1)` (a wrong type
//     fails in Postgres); all objects must have the same keys (400
//     PGRST102); an unknown column is 400 PGRST204; `on_conflict=` with
//     `Prefer: resolution=merge-duplicates` (DO UPDATE of the sent columns)
//     or `resolution=ignore-duplicates` (DO NOTHING), the primary key when
//     on_conflict is absent; `return=minimal` (201, no body, the default) or
//     `return=representation` (201 with the rows).
//   - GET /rest/v1/<table>?select=a,b&<col>=<op>.<v>&order=c.desc&limit=&offset=
//     with the operators eq neq gt gte lt lte like ilike is in; 200 with a
//     JSON array, of at most Options.MaxRows rows when set (db-max-rows).
//   - PATCH /rest/v1/<table>?<filters> with a JSON object; 204, or 200 with
//     the rows for return=representation.
//   - DELETE /rest/v1/<table>?<filters>: 204 (a filter is required, as
//     Supabase's safe-update setting requires).
//   - Errors shaped {"code","message","details","hint"} with PostgREST's
//     status mapping (401 bad JWT, 403 or 401 (anon) for 42501, 409 for
//     23505/23503, 400 for 23514/22xxx/PGRST102, 404 for 42P01, 503 when
//     the database is unreachable).
//
// What it does NOT reproduce: resource embedding, renamed or cast select
// columns, logical filters (or/and/not), count, Range headers, RPC,
// schemas other than public, the OpenAPI root, JWKS/asymmetric JWTs, the
// gateway's rate limits, and PostgREST's exact messages for every error.
// Request bodies are limited to 8 MiB (413).
package fakepostgrest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// maxBody bounds a request body; PostgREST itself has no limit, but a test
// server must not grow without bound.
const maxBody = 8 << 20

// Options configures the keys the server accepts.
type Options struct {
	// JWTSecret verifies HS256 JWTs (legacy projects' JWT secret).
	JWTSecret []byte
	// SecretKey is the sb_secret_… key that acts as service_role.
	SecretKey string
	// PublishableKey is the sb_publishable_… key that acts as anon.
	PublishableKey string
	// MaxConns bounds the pool (default 4).
	MaxConns int32
	// MaxRows is PostgREST's db-max-rows (Supabase's "Max rows" API
	// setting, 1000 by default on a project): a GET returns at most this
	// many rows whatever its limit, silently. 0 = no cap.
	MaxRows int
}

// Server is the handler; Start wraps it in an httptest.Server.
type Server struct {
	pool *pgxpool.Pool
	opts Options
}

// New returns the handler on a pool for databaseURL (a role that may
// `set role` to anon, authenticated and service_role). Close the pool with
// Close.
func New(ctx context.Context, databaseURL string, opts Options) (*Server, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = opts.MaxConns
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 4
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Server{pool: pool, opts: opts}, nil
}

// Close closes the database pool.
func (s *Server) Close() { s.pool.Close() }

// Start runs the server on 127.0.0.1 until the test ends.
func Start(t testing.TB, databaseURL string, opts Options) *httptest.Server {
	t.Helper()
	s, err := New(context.Background(), databaseURL, opts)
	if err != nil {
		t.Fatalf("fakepostgrest: %v", err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		srv.Close()
		s.Close()
	})
	return srv
}

// ServeHTTP routes /rest/v1/<table>.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	table, ok := strings.CutPrefix(r.URL.Path, "/rest/v1/")
	if !ok || table == "" || strings.Contains(table, "/") {
		writeErr(w, &apiError{status: http.StatusNotFound, Code: "PGRST125", Message: "Invalid path specified in request URL"})
		return
	}
	role, claims, aerr := s.authenticate(r.Header)
	if aerr != nil {
		writeErr(w, aerr)
		return
	}
	if p := r.Header.Get("Content-Profile"); p != "" && p != "public" {
		writeErr(w, &apiError{status: http.StatusNotAcceptable, Code: "PGRST106", Message: "The schema must be one of the following: public"})
		return
	}
	q, err := parseQuery(r.URL.Query())
	if err != nil {
		writeErr(w, err)
		return
	}
	if m := s.opts.MaxRows; m > 0 && (r.Method == http.MethodGet || r.Method == http.MethodHead) && (q.limit < 0 || q.limit > m) {
		q.limit = m
	}
	var body []byte
	if r.Method == http.MethodPost || r.Method == http.MethodPatch {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeErr(w, &apiError{status: http.StatusRequestEntityTooLarge, Code: "PGRST413", Message: "request body too large"})
			return
		}
	}
	prefer := parsePrefer(r.Header.Values("Prefer"))
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()

	var (
		status int
		out    []byte
	)
	err = s.inTx(ctx, role, claims, func(tx pgx.Tx) error {
		tbl, err := loadTable(ctx, tx, table)
		if err != nil {
			return err
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			status = http.StatusOK
			out, err = doSelect(ctx, tx, tbl, q)
		case http.MethodPost:
			status = http.StatusCreated
			out, err = doInsert(ctx, tx, tbl, q, prefer, body)
		case http.MethodPatch:
			status = http.StatusNoContent
			out, err = doUpdate(ctx, tx, tbl, q, prefer, body)
		case http.MethodDelete:
			status = http.StatusNoContent
			out, err = doDelete(ctx, tx, tbl, q, prefer)
		default:
			err = &apiError{status: http.StatusMethodNotAllowed, Code: "PGRST117", Message: "Unsupported HTTP method: " + r.Method}
		}
		return err
	})
	if err != nil {
		writeErr(w, toAPIError(err, role))
		return
	}
	if out != nil && status == http.StatusNoContent {
		status = http.StatusOK
	}
	if out == nil {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(out)
	}
}

// inTx runs fn in a transaction as role with the request's claims, the
// way PostgREST prepares every request.
func (s *Server) inTx(ctx context.Context, role string, claims []byte, fn func(pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)", role, string(claims)); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// preferences are the Prefer header's tokens that matter here.
type preferences struct {
	resolution     string // "", "merge-duplicates", "ignore-duplicates"
	representation bool
}

func parsePrefer(values []string) preferences {
	var p preferences
	for _, v := range values {
		for _, tok := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(strings.TrimSpace(tok), "=")
			switch k {
			case "resolution":
				p.resolution = val
			case "return":
				p.representation = val == "representation"
			}
		}
	}
	return p
}

// writeErr writes a PostgREST-shaped error body.
func writeErr(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{status: http.StatusInternalServerError, Code: "PGRST000", Message: "internal error"}
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(ae.status)
	_ = json.NewEncoder(w).Encode(ae)
}
