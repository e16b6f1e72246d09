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
}

// NewOperator makes an operator, an account and a user, in files of a
// temporary directory.
func NewOperator(t testing.TB) Operator {
	t.Helper()
	dir := t.TempDir()
	op := mustKey(t, nkeys.CreateOperator)
	account := func(js bool) (nkeys.KeyPair, string) {
		acc := mustKey(t, nkeys.CreateAccount)
		accPub, _ := acc.PublicKey()
		claims := jwt.NewAccountClaims(accPub)
		if js {
			claims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		accJWT, err := claims.Encode(op)
		if err != nil {
			t.Fatal(err)
		}
		return acc, accJWT
	}
	user := func(acc nkeys.KeyPair, name string) string {
		u := mustKey(t, nkeys.CreateUser)
		uPub, _ := u.PublicKey()
		claims := jwt.NewUserClaims(uPub)
		claims.IssuerAccount, _ = acc.PublicKey()
		uJWT, err := claims.Encode(acc)
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := u.Seed()
		creds, err := jwt.FormatUserConfig(uJWT, seed)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, creds, 0o600); err != nil {
			t.Fatal(err)
		}
		return file
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
		Creds: user(acc, "user.creds"),
		Other: user(stranger, "stranger.creds"),
	}
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
}

// NewTLS makes the CA and both certificates.
func NewTLS(t testing.TB) TLS {
	t.Helper()
	dir := t.TempDir()
	ca, caKey := newCA(t)
	other, _ := newCA(t)
	write := func(name, kind string, der []byte) string {
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return file
	}
	leaf := func(name string, usage x509.ExtKeyUsage) (cert, key string) {
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
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	s := TLS{CA: write("ca.pem", "CERTIFICATE", ca.Raw), OtherCA: write("other-ca.pem", "CERTIFICATE", other.Raw)}
	s.ServerCert, s.ServerKey = leaf("server", x509.ExtKeyUsageServerAuth)
	s.Cert, s.Key = leaf("client", x509.ExtKeyUsageClientAuth)
	return s
}

// Conf is the server's tls block; verify asks for a client certificate.
func (s TLS) Conf(verify bool) string {
	return "tls {\n  cert_file: " + strconv.Quote(s.ServerCert) + "\n  key_file: " + strconv.Quote(s.ServerKey) +
		"\n  ca_file: " + strconv.Quote(s.CA) + "\n  verify: " + strconv.FormatBool(verify) + "\n}\n"
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
