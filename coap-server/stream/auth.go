package stream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// An external NATS authenticates coap-server as its operator set it up:
// a user and password or a token in NATS_URL; a credentials file
// (NATS_CREDS: decentralised JWT authentication, as Synadia Cloud and nsc
// hand it out); a client certificate (NATS_CERT and NATS_KEY), over TLS
// (tls://, with the CAs in NATS_CA when they are private). Each of the
// four holds a file's path, or the file's content itself (it then starts
// with "-----BEGIN"), for platforms whose secrets are environment
// variables (fly secrets set NATS_CREDS="$(cat user.creds)"). They are
// read and checked once, at start, so that a wrong one is one line naming
// its variable; a rotated file takes a restart. No error quotes a value:
// a path's error says only what went wrong, in case the value was a
// secret pasted in part.

// validateAuth checks the variables against each other: each needs an
// external NATS, and a certificate needs its key.
func (c Config) validateAuth() error {
	for _, v := range []struct{ name, value string }{
		{"NATS_CREDS", c.Creds}, {"NATS_CA", c.CAFile}, {"NATS_CERT", c.CertFile}, {"NATS_KEY", c.KeyFile},
	} {
		if v.value != "" && c.URL == "" {
			return fmt.Errorf("%s: needs NATS_URL (the embedded server has no users and no port)", v.name)
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("NATS_CERT and NATS_KEY: set both (a client certificate and its key) or neither")
	}
	return nil
}

// readValue is a variable's file: its content when the value is one, else
// the file at the path it names.
func readValue(name, value string) ([]byte, error) {
	if strings.HasPrefix(strings.TrimSpace(value), "-----BEGIN") {
		return []byte(value), nil
	}
	b, err := os.ReadFile(value)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s: cannot read the file it names (a path, or the file's content starting with -----BEGIN): %w", name, err)
	}
	return b, nil
}

// authOptions reads and checks the files and returns the connection
// options that use them.
func (c Config) authOptions() ([]nats.Option, error) {
	var opts []nats.Option
	if c.Creds != "" {
		b, err := readValue("NATS_CREDS", c.Creds)
		if err != nil {
			return nil, err
		}
		_, jerr := nkeys.ParseDecoratedJWT(b)
		kp, kerr := nkeys.ParseDecoratedNKey(b)
		if jerr != nil || kerr != nil {
			return nil, errors.New("NATS_CREDS: not a NATS credentials file (a user JWT and its NKey seed, as nsc writes them)")
		}
		kp.Wipe()
		opts = append(opts, nats.UserCredentialBytes(b))
	}
	if c.CAFile == "" && c.CertFile == "" {
		return opts, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		b, err := readValue("NATS_CA", c.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(b) {
			return nil, errors.New("NATS_CA: holds no PEM certificate")
		}
	}
	if c.CertFile != "" {
		cert, err := readValue("NATS_CERT", c.CertFile)
		if err != nil {
			return nil, err
		}
		key, err := readValue("NATS_KEY", c.KeyFile)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(cert, key)
		clear(key)
		if err != nil {
			return nil, fmt.Errorf("NATS_CERT and NATS_KEY: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return append(opts, nats.Secure(cfg)), nil
}

// connectHint says which variable to look at for an error of connecting
// to NATS_URL, where one tells.
func connectHint(err error) string {
	var unknown x509.UnknownAuthorityError
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return " (check the credentials: NATS_CREDS, NATS_CERT, or the user and password in NATS_URL)"
	case errors.As(err, &unknown):
		return " (the server's certificate is not signed by a CA this machine trusts: set NATS_CA)"
	}
	return ""
}
