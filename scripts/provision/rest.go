package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/nbiot-live/nbiot-live/coap-server/storage/rest"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// restStore provisions through Supabase REST (PostgREST) with the service
// key, which bypasses RLS. Two requests, not one transaction: the devices
// row first, so a failed key insert leaves at most an ownerless or owned
// row, which a rerun completes.
type restStore struct {
	base   string // SUPABASE_URL + /rest/v1
	key    string // never logged or printed
	client *http.Client
}

func newREST(supabaseURL, serviceKey string) (*restStore, error) {
	// coap-server's REST writer's own check: the same keys pass (a
	// service_role JWT or an sb_secret_ key), and a publishable or anon key
	// is refused here rather than by RLS half-way.
	if _, err := rest.New(supabaseURL, serviceKey, rest.Options{}); err != nil {
		return nil, err
	}
	return &restStore{
		base:   strings.TrimRight(supabaseURL, "/") + "/rest/v1",
		key:    serviceKey,
		client: &http.Client{Timeout: 15 * time.Second},
	}, nil
}

func (s *restStore) close() {}

// apiError is PostgREST's error body.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (s *restStore) provision(ctx context.Context, r request) error {
	row := map[string]any{"devid": r.device}
	if r.owner != "" {
		id, err := uuid.Parse(r.owner)
		if err != nil {
			return errors.New("-owner: over REST give the user's UUID (Authentication > Users in the dashboard, or select id from auth.users where email = '…' in the SQL editor): auth.users is not exposed to REST")
		}
		row["owner_id"] = id.String()
	}
	// merge-duplicates updates only the columns sent: without -owner a
	// device that already reported keeps its owner.
	status, ae, err := s.post(ctx, "devices?on_conflict=devid", "resolution=merge-duplicates", row)
	switch {
	case err != nil:
		return err
	case status == http.StatusConflict && ae.Code == "23503":
		return errors.New("-owner: no auth.users row with that id")
	case status != http.StatusCreated:
		return restFailure("devices", status, ae)
	}
	if r.psk == nil {
		return nil
	}
	cred := map[string]any{"devid": r.device, "psk": `\x` + hex.EncodeToString(r.psk), "created_at": time.Now().UTC().Format(time.RFC3339Nano)}
	path, prefer := "device_credentials", ""
	if r.rotate {
		path, prefer = "device_credentials?on_conflict=devid", "resolution=merge-duplicates"
	}
	status, ae, err = s.post(ctx, path, prefer, cred)
	switch {
	case err != nil:
		return err
	case status == http.StatusConflict && ae.Code == "23505":
		return errKeyExists
	case status != http.StatusCreated:
		return restFailure("device_credentials", status, ae)
	}
	return nil
}

// post sends one row; it returns the status and, for an error, the body.
func (s *restStore) post(ctx context.Context, path, prefer string, row map[string]any) (int, apiError, error) {
	var ae apiError
	body, err := json.Marshal([]map[string]any{row})
	if err != nil {
		return 0, ae, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/"+path, bytes.NewReader(body))
	if err != nil {
		return 0, ae, err
	}
	supa.SetKey(req.Header, s.key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Prefer", strings.TrimPrefix(prefer+",return=minimal", ","))
	resp, err := s.client.Do(req)
	if err != nil {
		// The error names the URL, which holds no secret (the key is a header).
		return 0, ae, fmt.Errorf("%s: %w", strings.SplitN(path, "?", 2)[0], err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 300 {
		_ = json.Unmarshal(raw, &ae)
	}
	return resp.StatusCode, ae, nil
}

func restFailure(table string, status int, ae apiError) error {
	hint := ""
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		hint = " (is SUPABASE_SERVICE_KEY the project's service key?)"
	case http.StatusNotFound:
		hint = " (are the migrations pushed? supabase db push)"
	}
	return fmt.Errorf("%s: HTTP %d%s", table, status, strings.TrimRight(" "+ae.Code+" "+ae.Message, " ")+hint)
}
