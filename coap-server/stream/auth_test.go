package stream

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/logtest"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// logsOne opens an engine on cfg and logs an entry: the stream took it.
func logsOne(t *testing.T, cfg Config) {
	t.Helper()
	cfg.ConnectTimeout = 5 * time.Second
	e, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer e.Close()
	logOne(t, e)
}

// refused opens an engine on cfg and returns why it did not open.
func refused(t *testing.T, cfg Config) string {
	t.Helper()
	cfg.ConnectTimeout = 5 * time.Second
	e, err := Open(context.Background(), cfg)
	if err == nil {
		e.Close()
		t.Fatal("opened")
	}
	return err.Error()
}

// A NATS with decentralised authentication, as Synadia Cloud or nsc sets
// it up (Debian's nats-server, operator mode): coap-server gets in with
// NATS_CREDS; without it, or with a user of another account, the start is
// one line that names the credentials and quotes no secret. Before
// NATS_CREDS, such a NATS (the README's hosted option) could not be used.
func TestNATSCredentials(t *testing.T) {
	op := natstest.NewOperator(t)
	srv := natstest.StartWith(t, op.Conf)
	logsOne(t, Config{URL: srv.URL, Creds: op.Creds, Storage: true})

	seed := seedOf(t, op.Creds)
	for name, creds := range map[string]string{"none": "", "another account's user": op.Other} {
		msg := refused(t, Config{URL: srv.URL, Creds: creds})
		if !strings.HasPrefix(msg, "NATS_URL: cannot connect to NATS") || !strings.Contains(msg, "NATS_CREDS") {
			t.Errorf("%s: %q, want NATS_URL's line naming NATS_CREDS", name, msg)
		}
		if strings.Contains(msg, seed) {
			t.Errorf("%s: the error quotes the seed", name)
		}
	}

	notCreds := filepath.Join(t.TempDir(), "user.creds")
	if err := os.WriteFile(notCreds, []byte("not a credentials file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		notCreds:                           "NATS_CREDS: not a NATS credentials file",
		filepath.Join(t.TempDir(), "gone"): "NATS_CREDS: cannot read the file it names",
		"-----BEGIN NATS USER JWT-----\nnot a JWT": "NATS_CREDS: not a NATS credentials file",
	} {
		msg := refused(t, Config{URL: srv.URL, Creds: file})
		if !strings.HasPrefix(msg, want) {
			t.Errorf("NATS_CREDS=%s: %q, want it to start %q", file, msg, want)
		}
		if strings.Contains(msg, file) {
			t.Errorf("NATS_CREDS=%s: the error quotes the value: %q", file, msg)
		}
	}

	// The file's content itself, as a platform's secret holds it.
	b, err := os.ReadFile(op.Creds)
	if err != nil {
		t.Fatal(err)
	}
	logsOne(t, Config{URL: srv.URL, Creds: string(b)})
}

// seedOf is the NKey seed in a credentials file, to check no error quotes it.
func seedOf(t *testing.T, creds string) string {
	t.Helper()
	b, err := os.ReadFile(creds)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "SU") {
			return line
		}
	}
	t.Fatal("no seed in " + creds)
	return ""
}

// A NATS on tls:// with a private CA (NATS_CA), and one that also asks
// for a client certificate (NATS_CERT, NATS_KEY).
func TestNATSOverTLS(t *testing.T) {
	certs := natstest.NewTLS(t)
	srv := natstest.StartWith(t, certs.Conf(false))
	url := "tls://" + srv.Addr
	logsOne(t, Config{URL: url, CAFile: certs.CA, Storage: true})
	for name, ca := range map[string]string{"no NATS_CA": "", "another CA": certs.OtherCA} {
		if msg := refused(t, Config{URL: url, CAFile: ca}); !strings.HasPrefix(msg, "NATS_URL: cannot connect to NATS") || !strings.Contains(msg, "set NATS_CA") {
			t.Errorf("%s: %q, want NATS_URL's line naming NATS_CA", name, msg)
		}
	}
	if msg := refused(t, Config{URL: url, CAFile: certs.Key}); !strings.HasPrefix(msg, "NATS_CA: holds no PEM certificate") {
		t.Errorf("NATS_CA naming a key: %q", msg)
	}
	logsOne(t, Config{URL: url, CAFile: read(t, certs.CA)}) // the PEM itself

	mutual := natstest.StartWith(t, certs.Conf(true))
	url = "tls://" + mutual.Addr
	logsOne(t, Config{URL: url, CAFile: certs.CA, CertFile: certs.Cert, KeyFile: certs.Key})
	logsOne(t, Config{URL: url, CAFile: read(t, certs.CA), CertFile: read(t, certs.Cert), KeyFile: read(t, certs.Key)})
	if msg := refused(t, Config{URL: url, CAFile: certs.CA}); !strings.HasPrefix(msg, "NATS_URL: cannot connect to NATS") {
		t.Errorf("no client certificate: %q", msg)
	}
	if msg := refused(t, Config{URL: url, CAFile: certs.CA, CertFile: certs.Cert, KeyFile: certs.ServerKey}); !strings.HasPrefix(msg, "NATS_CERT and NATS_KEY: ") {
		t.Errorf("a key that is not the certificate's: %q", msg)
	}
	if msg := refused(t, Config{URL: url, CAFile: certs.CA, CertFile: certs.Cert, KeyFile: read(t, certs.ServerKey)}); strings.Contains(msg, "PRIVATE KEY") {
		t.Errorf("the error quotes the key: %q", msg)
	}
}

func read(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The variables need NATS_URL, and a certificate its key.
func TestNATSAuthVariables(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"NATS_CREDS": "/x.creds"}, "NATS_CREDS: needs NATS_URL"},
		{map[string]string{"NATS_CA": "/ca.pem"}, "NATS_CA: needs NATS_URL"},
		{map[string]string{"NATS_URL": "tls://n:4222", "NATS_CERT": "/c.pem"}, "NATS_CERT and NATS_KEY: set both"},
		{map[string]string{"NATS_URL": "tls://n:4222", "NATS_KEY": "/k.pem"}, "NATS_CERT and NATS_KEY: set both"},
	} {
		c := Config{URL: tc.env["NATS_URL"]}
		if err := c.FromEnv(env(tc.env)); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.env, err, tc.want)
		}
	}
	c := Config{URL: "tls://n:4222"}
	if err := c.FromEnv(env(map[string]string{"NATS_CREDS": "/x.creds", "NATS_CA": "/ca.pem", "NATS_CERT": "/c.pem", "NATS_KEY": "/k.pem"})); err != nil ||
		c.Creds != "/x.creds" || c.CAFile != "/ca.pem" || c.CertFile != "/c.pem" || c.KeyFile != "/k.pem" {
		t.Errorf("all four with NATS_URL: %v %+v", err, c)
	}
}

// A user JWT that expires (`nsc add user --expiry`, short-lived
// credentials): the server ends the connections at its expiry and refuses
// them from then on. The operator replaces the file NATS_CREDS names, and
// coap-server is ready again on the new one without a restart. Before, it
// read the file once at start, and nats.go stopped reconnecting for good
// after the same refusal twice: unready, every uplink 5.03, until a
// restart.
func TestReplacedCredentialsFileIsUsed(t *testing.T) {
	op := natstest.NewOperator(t)
	srv := natstest.StartWith(t, op.Conf)
	// Long enough for the start (streams made, an entry logged).
	creds := op.User(t, "expiring.creds", time.Now().Add(4*time.Second))
	e, err := Open(context.Background(), Config{URL: srv.URL, Creds: creds, Storage: true, ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer e.Close()
	logOne(t, e)

	// Expired, then refused again on each attempt: nats.go gives up after
	// the same refusal twice, so three on each connection are past that.
	testwait.ForState(t, "each connection refused three times", func() (bool, string) {
		n := []int64{e.ncAuth.count.Load(), e.feedAuth.count.Load(), e.stAuth.count.Load()}
		return min(n[0], n[1], n[2]) >= 3, fmt.Sprint(n)
	}, testwait.Within(40*time.Second))
	if e.Ready() {
		t.Fatal("ready while refused")
	}
	op.User(t, creds, time.Time{}) // the new credentials, over the old file
	// Attempts are at most refusedMaxWait apart while refused.
	testwait.For(t, "ready on the new credentials", e.Ready, testwait.Within(30*time.Second))
	logOne(t, e)
}

// Client certificates moved to a new CA: the operator replaces the files
// NATS_CERT and NATS_KEY name, then the server accepts only the new CA's.
// coap-server reconnects with the new certificate. Before, the pair read
// at start was offered at every handshake, refused for good.
func TestReplacedClientCertificateIsUsed(t *testing.T) {
	certs := natstest.NewTLS(t)
	srv := natstest.StartWith(t, certs.Conf(true))
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	place := func(from, to string) { // as a secret store replaces a file: whole
		if err := os.WriteFile(to+".new", []byte(read(t, from)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(to+".new", to); err != nil {
			t.Fatal(err)
		}
	}
	place(certs.Cert, cert)
	place(certs.Key, key)
	e, err := Open(context.Background(), Config{URL: "tls://" + srv.Addr, CAFile: certs.CA, CertFile: cert, KeyFile: key, ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer e.Close()
	logOne(t, e)

	ca, newCert, newKey := certs.NewClientCA(t, "rotated")
	place(newKey, key) // the key first: a handshake between the two keeps the old pair
	place(newCert, cert)
	srv.RestartWith(t, certs.ConfClientCA(ca))
	testwait.For(t, "ready with the new certificate", e.Ready, testwait.Within(30*time.Second))
	logOne(t, e)
}

// logOne logs an entry on e: the stream took it.
func logOne(t *testing.T, e *Engine) {
	t.Helper()
	a, _ := accepted(t, "AUTH-1", 1)
	if seq, _, err := e.Log(context.Background(), livelog.Uplink("AUTH-1", a.ReceivedAt, a.Uplink, nil), ""); err != nil || seq == 0 {
		t.Fatalf("log: seq %d, %v", seq, err)
	}
}

// A NATS user let in but refused subjects (its permissions, as a hosted
// NATS's user made for something else): what the user needs works, with
// storage and the live log's feed; without publish on nbiot.> each
// refused publish is counted and logged with what the user needs. Before,
// nats.go reported the violation to nobody: 5.03 after AckTimeout, and no
// reason anywhere.
func TestNATSUserPermissions(t *testing.T) {
	srv := natstest.StartWith(t, `authorization {
  users = [
    {user: coap, password: "coap-pass-0123456789", permissions: {
      publish: ["nbiot.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>"], subscribe: ["nbiot.notify.>", "_INBOX.>"]}},
    {user: partial, password: "partial-pass-0123456789", permissions: {
      publish: ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>"], subscribe: ["nbiot.notify.>", "_INBOX.>"]}},
    {user: nojs, password: "nojs-pass-0123456789", permissions: {
      publish: ["nbiot.>"], subscribe: ["nbiot.notify.>", "_INBOX.>"]}}
  ]
}
`)
	at := func(user, pass string) string { return "nats://" + user + ":" + pass + "@" + srv.Addr }
	e, err := Open(context.Background(), Config{URL: at("coap", "coap-pass-0123456789"), Storage: true, ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open with the permissions the README names: %v", err)
	}
	logOne(t, e)
	a, payload := accepted(t, "PERM-1", 1)
	if err := e.PublishUplink(context.Background(), a, payload); err != nil {
		t.Fatalf("uplink: %v", err)
	}
	src, err := e.UplinkSource(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := drain(t, src, 1, 10); len(got) != 1 {
		t.Fatalf("storage fetched %d uplinks, want 1", len(got))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fed := make(chan uint64, 16)
	stop, _, err := e.Feed(ctx, func(seq uint64, _ string, _ []byte) { fed <- seq })
	if err != nil {
		t.Fatalf("feed: %v", err)
	}
	defer stop()
	seq, _, err := e.Log(context.Background(), livelog.Uplink("PERM-1", a.ReceivedAt, a.Uplink, nil), "")
	if err != nil {
		t.Fatal(err)
	}
	for got := range fed {
		if got == seq {
			break
		}
	}
	if n := e.PermissionErrors(); n != 0 {
		t.Errorf("%d permission violations with the permissions the README names", n)
	}
	e.Close()

	log := &logtest.Buffer{}
	e, err = Open(context.Background(), Config{URL: at("partial", "partial-pass-0123456789"), Storage: true,
		ConnectTimeout: 5 * time.Second, AckTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer e.Close()
	if _, _, err := e.Log(context.Background(), livelog.Uplink("PERM-1", a.ReceivedAt, a.Uplink, nil), ""); err == nil {
		t.Fatal("a publish the server refuses was taken")
	}
	testwait.For(t, "the violation counted", func() bool { return e.PermissionErrors() > 0 })
	// Without the JetStream API the start cannot look at its streams: its
	// one line says what the user lacks.
	if msg := refused(t, Config{URL: at("nojs", "nojs-pass-0123456789")}); !strings.HasPrefix(msg, "NATS_URL: stream LIVELOG: ") || !strings.Contains(msg, userPermissions) {
		t.Errorf("without the JetStream API: %q, want the permissions named", msg)
	}
	testwait.For(t, "the violation logged", func() bool {
		return strings.Contains(log.String(), "publish on nbiot.>, $JS.API.>, $JS.ACK.> and $JS.FC.>, and subscribe on nbiot.notify.> and _INBOX.>")
	})
}
