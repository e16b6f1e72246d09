package httpapi_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// positionOnly is a live log that only tells its position (the history
// is never read: the fuzzed request never completes its handshake).
type positionOnly struct{ asked int }

func (p *positionOnly) LivePosition(context.Context) (stream.Position, error) {
	p.asked++
	return stream.Position{First: 1, Last: 7}, nil
}

func (*positionOnly) Read(context.Context, []stream.Cursor, uint64, stream.ReadFunc) error {
	panic("history read for a request that was not upgraded")
}

func (*positionOnly) TailStart(context.Context, string, int, uint64) (uint64, error) {
	panic("history read for a request that was not upgraded")
}

var deviceIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`) // the README's rule

// FuzzWSRequest feeds GET /ws arbitrary Authorization headers and query
// strings (what any client of HTTP_ADDR sends), through the handler
// without a socket: authorization (the bearer token, compared in constant
// time), deviceId (repeatable, at most MaxDevicesPerSubscriber, each
// ^[A-Za-z0-9_-]{1,64}$), since/tail (FuzzParseStart has those) and
// position. It must not panic, and answers exactly one way, counted once
// under its reason: 401 with WWW-Authenticate unless the header is
// "Bearer " (any case) and the token, always 401 for a server without a
// token; else 400 for too many or an invalid deviceId or a bad
// since/tail; else it goes on to the handshake (refused here: no Upgrade
// header), having asked the live log's position only for since, tail or
// position=1. No answer shows the token or echoes the request.
func FuzzWSRequest(f *testing.F) {
	const token = "t0123456789abcdef-ws-token"
	for _, c := range [][2]string{
		{"Bearer " + token, "deviceId=ABC123"},
		{"bearer " + token, "deviceId=ABC123&deviceId=DEF456&deviceId=ABC123"},
		{"BEARER " + token, "deviceId=a_b-C&since=42&retransmissions=1&position=1"},
		{"Bearer " + token, "tail=10&deviceId=K1"},
		{"Bearer " + token, "since=1&tail=1"},
		{"Bearer " + token, "since=-1"},
		{"Bearer " + token, "since=9223372036854775808"},
		{"Bearer " + token, "tail=1001"},
		{"Bearer " + token, "position=1"},
		{"Bearer " + token, "position=true&retransmissions=yes"},
		{"Bearer " + token, "deviceId=a.b"},
		{"Bearer " + token, "deviceId="},
		{"Bearer " + token, "deviceId=" + strings.Repeat("x", 65)},
		{"Bearer " + token, "deviceId=%41%42%43"},
		{"Bearer " + token, "deviceId=ABC%00"},
		{"Bearer " + token, "deviceId=a;deviceId=b.c"},
		{"Bearer " + token, "deviceId=%zz"},
		{"Bearer " + token, "deviceId=" + strings.Repeat("a&deviceId=", httpapi.MaxDevicesPerSubscriber) + "a"},
		{"Bearer " + token, "deviceId=" + strings.Repeat("a&deviceId=", httpapi.MaxDevicesPerSubscriber-1) + "a"},
		{"Bearer " + token + " ", ""},
		{"Bearer  " + token, ""},
		{"Bearer" + token, ""},
		{"Bearer ", ""},
		{"Bearer", ""},
		{"Basic dXNlcjpwYXNz", ""},
		{token, ""},
		{"", "deviceId=ABC123"},
		{"Bearer " + token[:len(token)-1], ""},
		{"Bearer \x00\xff", ""},
	} {
		f.Add(c[0], c[1])
	}
	reg := prometheus.NewRegistry()
	m := httpapi.NewMetrics(reg)
	history := &positionOnly{}
	api := &httpapi.Server{Hub: hub.New(hub.NewMetrics(reg)), History: history, Token: token, Gatherer: reg, Metrics: m,
		Logger: slog.New(slog.DiscardHandler)}
	h := api.Handler()
	noToken := (&httpapi.Server{Hub: hub.New(hub.NewMetrics(prometheus.NewRegistry())), Logger: slog.New(slog.DiscardHandler)}).Handler()
	reasons := []string{httpapi.RejectUnauthorized, httpapi.RejectBadRequest, httpapi.RejectBusy, httpapi.RejectUnavailable, httpapi.RejectUpgrade}
	counts := func() map[string]float64 {
		c := make(map[string]float64, len(reasons))
		for _, r := range reasons {
			c[r] = testutil.ToFloat64(m.Rejected.WithLabelValues(r))
		}
		return c
	}
	f.Fuzz(func(t *testing.T, authorization, query string) {
		req := httptest.NewRequest(http.MethodGet, "/ws", nil)
		req.URL.RawQuery = query
		req.Header.Set("Authorization", authorization)

		w := httptest.NewRecorder()
		noToken.ServeHTTP(w, req)
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("a server without a token answered %d to %q", w.Code, authorization)
		}

		before, asked := counts(), history.asked
		w = httptest.NewRecorder()
		h.ServeHTTP(w, req)
		after := counts()

		q, _ := url.ParseQuery(query) // what r.URL.Query reads: bad pairs dropped
		devices := q["deviceId"]
		invalid := false
		for _, d := range devices {
			if !deviceIDPattern.MatchString(d) {
				invalid = true
			}
		}
		since, tail, startErr := livelog.ParseStart(q)
		var reason, msg string
		status := http.StatusBadRequest
		switch {
		case len(authorization) <= 7 || !strings.EqualFold(authorization[:7], "Bearer ") || authorization[7:] != token:
			reason, status, msg = httpapi.RejectUnauthorized, http.StatusUnauthorized, "missing or invalid bearer token"
		case len(devices) > httpapi.MaxDevicesPerSubscriber:
			reason, msg = httpapi.RejectBadRequest, "too many deviceId parameters"
		case invalid:
			reason, msg = httpapi.RejectBadRequest, "invalid deviceId: must match ^[A-Za-z0-9_-]{1,64}$"
		case startErr != nil:
			reason, msg = httpapi.RejectBadRequest, startErr.Error()
		default:
			reason = httpapi.RejectUpgrade // gorilla's answer
		}
		if w.Code != status {
			t.Fatalf("%q ?%s: HTTP %d (%q), want %d for %s", authorization, query, w.Code, w.Body, status, reason)
		}
		if msg != "" && w.Body.String() != msg+"\n" {
			t.Fatalf("%q ?%s: answered %q, want %q", authorization, query, w.Body, msg)
		}
		if got := w.Header().Get("WWW-Authenticate"); (status == http.StatusUnauthorized) != (got != "") {
			t.Fatalf("%q: HTTP %d with WWW-Authenticate %q", authorization, w.Code, got)
		}
		for _, r := range reasons {
			want := before[r]
			if r == reason {
				want++
			}
			if after[r] != want {
				t.Fatalf("%q ?%s: %s counted %v times, want %v (answered %d for %s)", authorization, query, r, after[r]-before[r], want-before[r], w.Code, reason)
			}
		}
		wantAsked := asked
		if reason == httpapi.RejectUpgrade && (since >= 0 || tail >= 0 || q.Get("position") == "1") {
			wantAsked++
		}
		if history.asked != wantAsked {
			t.Fatalf("%q ?%s: the live log's position asked %d times, want %d", authorization, query, history.asked-asked, wantAsked-asked)
		}
		body := w.Body.String()
		if strings.Contains(body, token) || len(body) > 200 {
			t.Fatalf("%q ?%s: the answer %q shows the token or echoes the request", authorization, query, body)
		}
	})
}
