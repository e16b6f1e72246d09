package natstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// StartWith runs nats-server -js, as Start does, with conf as its
// configuration file (nats-server's own syntax): the authentication and
// TLS of a real deployment (Operator, TLS).
func StartWith(t testing.TB, conf string) *Server {
	t.Helper()
	bin := binary(t)
	file := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	for range attempts {
		s := newServer(t, bin, freePorts(t, 1)[0])
		s.args = []string{"-c", file}
		if err = s.start(); err == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatal(err)
	return nil
}

// Operator is decentralised authentication as a hosted NATS (Synadia
// Cloud) or `nsc` sets it up: an operator, an account with JetStream, and
// a user of it whose credentials file (user JWT and NKey seed) is Creds.
// Conf is the server configuration that trusts the operator; Other is the
// credentials file of a user of an account the server does not know.
type Operator struct {
	Conf, Creds, Other string

	dir     string
	account nkeys.KeyPair // Creds' account, which signs its users
}

// NewOperator makes an operator, an account and a user, in files of a
// temporary directory.
func NewOperator(t testing.TB) Operator { return NewOperatorWithStorage(t, -1) }

// NewOperatorWithStorage is NewOperator with an account that may keep
// disk bytes of JetStream file storage (-1: no limit), as a hosted NATS's
// plan sets it.
func NewOperatorWithStorage(t testing.TB, disk int64) Operator {
	t.Helper()
	dir := t.TempDir()
	op := mustKey(t, nkeys.CreateOperator)
	account := func(js bool) (nkeys.KeyPair, string) {
		acc := mustKey(t, nkeys.CreateAccount)
		accPub, _ := acc.PublicKey()
		claims := jwt.NewAccountClaims(accPub)
		if js {
			claims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: disk, Streams: -1, Consumer: -1}
		}
		accJWT, err := claims.Encode(op)
		if err != nil {
			t.Fatal(err)
		}
		return acc, accJWT
	}
	user := func(acc nkeys.KeyPair, name string) string {
		return writeUser(t, acc, filepath.Join(dir, name), time.Time{})
	}
	sys, sysJWT := account(false) // the server's own (JetStream needs one)
	sysPub, _ := sys.PublicKey()
	acc, accJWT := account(true)
	accPub, _ := acc.PublicKey()
	stranger, _ := account(true) // never preloaded: the server does not know it
	opPub, _ := op.PublicKey()
	opClaims := jwt.NewOperatorClaims(opPub)
	opClaims.SystemAccount = sysPub
	opJWT, err := opClaims.Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	return Operator{
		Conf: fmt.Sprintf("operator: %q\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n  %s: %q\n  %s: %q\n}\n",
			opJWT, sysPub, sysPub, sysJWT, accPub, accJWT),
		Creds:   user(acc, "user.creds"),
		Other:   user(stranger, "stranger.creds"),
		dir:     dir,
		account: acc,
	}
}

// User writes, at file (a name in the operator's directory, or a path),
// the credentials of a new user of Creds' account whose JWT expires at
// expires (never when zero), as `nsc add user --expiry` does, and returns
// the file's path. The server ends a connection of that user when its JWT
// expires and refuses it from then on.
func (o Operator) User(t testing.TB, file string, expires time.Time) string {
	t.Helper()
	if !filepath.IsAbs(file) {
		file = filepath.Join(o.dir, file)
	}
	return writeUser(t, o.account, file, expires)
}

// writeUser makes a user of acc and writes its credentials file: a new
// file in the same directory, renamed over file, so that a reader never
// sees half of one (as a secret store replaces a mounted file).
func writeUser(t testing.TB, acc nkeys.KeyPair, file string, expires time.Time) string {
	t.Helper()
	u := mustKey(t, nkeys.CreateUser)
	uPub, _ := u.PublicKey()
	claims := jwt.NewUserClaims(uPub)
	claims.IssuerAccount, _ = acc.PublicKey()
	if !expires.IsZero() {
		claims.Expires = expires.Unix()
	}
	uJWT, err := claims.Encode(acc)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := u.Seed()
	creds, err := jwt.FormatUserConfig(uJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	tmp := file + ".new"
	if err := os.WriteFile(tmp, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	return file
}

func mustKey(t testing.TB, create func() (nkeys.KeyPair, error)) nkeys.KeyPair {
	t.Helper()
	k, err := create()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TLS is a private CA with a server certificate for 127.0.0.1 and a
// client certificate, in PEM files: what a self-run cluster on tls://
// uses. Conf is the server's tls block; with verify it also asks for a
// client certificate signed by the CA.
type TLS struct {
	CA, Cert, Key         string // the CA, and the client's certificate and key
	ServerCert, ServerKey string
	OtherCA               string // a CA that signed neither

	dir string
}

// NewTLS makes the CA and both certificates.
func NewTLS(t testing.TB) TLS {
	t.Helper()
	dir := t.TempDir()
	ca, caKey := newCA(t)
	other, _ := newCA(t)
	s := TLS{CA: writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw), OtherCA: writePEM(t, dir, "other-ca.pem", "CERTIFICATE", other.Raw), dir: dir}
	s.ServerCert, s.ServerKey = leaf(t, dir, "server", x509.ExtKeyUsageServerAuth, ca, caKey)
	s.Cert, s.Key = leaf(t, dir, "client", x509.ExtKeyUsageClientAuth, ca, caKey)
	return s
}

// NewClientCA makes another CA and a client certificate it signs, in new
// files: what moving the clients' certificates to a new CA hands out.
// ConfClientCA(ca) is then a server that accepts only those.
func (s TLS) NewClientCA(t testing.TB, name string) (ca, cert, key string) {
	t.Helper()
	c, k := newCA(t)
	ca = writePEM(t, s.dir, name+"-ca.pem", "CERTIFICATE", c.Raw)
	cert, key = leaf(t, s.dir, name, x509.ExtKeyUsageClientAuth, c, k)
	return ca, cert, key
}

// ConfClientCA is Conf(true) with the clients' certificates checked
// against the CA in file ca.
func (s TLS) ConfClientCA(ca string) string { return s.conf(ca, true) }

func writePEM(t testing.TB, dir, name, kind string, der []byte) string {
	t.Helper()
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// leaf makes a certificate for 127.0.0.1 signed by ca, and its key.
func leaf(t testing.TB, dir, name string, usage x509.ExtKeyUsage, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "EC PRIVATE KEY", kder)
}

// Conf is the server's tls block; verify asks for a client certificate.
func (s TLS) Conf(verify bool) string { return s.conf(s.CA, verify) }

func (s TLS) conf(ca string, verify bool) string {
	return "tls {\n  cert_file: " + strconv.Quote(s.ServerCert) + "\n  key_file: " + strconv.Quote(s.ServerKey) +
		"\n  ca_file: " + strconv.Quote(ca) + "\n  verify: " + strconv.FormatBool(verify) + "\n}\n"
}

func newCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: "natstest CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, k
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
