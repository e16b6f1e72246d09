package stream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"

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
// read and checked at start, so that a wrong one is one line naming its
// variable. A path is read again at each connection attempt (NATS_CREDS)
// or TLS handshake (NATS_CERT, NATS_KEY), so that a file replaced while
// coap-server runs (credentials that expire, a secret store's mounted
// file) is used from the next reconnection on, without a restart
// (refused.go); a content changes with a restart, as a platform's secrets
// do anyway. No error quotes a value: a path's error says only what went
// wrong, in case the value was a secret pasted in part.

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

// isContent reports whether a variable holds a file's content rather than
// its path.
func isContent(value string) bool {
	return strings.HasPrefix(strings.TrimSpace(value), "-----BEGIN")
}

// readValue is a variable's file: its content when the value is one, else
// the file at the path it names.
func readValue(name, value string) ([]byte, error) {
	if isContent(value) {
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
		if isContent(c.Creds) {
			opts = append(opts, nats.UserCredentialBytes(b))
		} else {
			clear(b)
			opts = append(opts, nats.UserCredentials(c.Creds)) // read at each attempt
		}
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
		pair, err := c.clientCert()
		if err != nil {
			return nil, err
		}
		if isContent(c.CertFile) && isContent(c.KeyFile) {
			cfg.Certificates = []tls.Certificate{*pair}
		} else {
			cfg.GetClientCertificate = c.clientCertAgain(pair)
		}
	}
	return append(opts, nats.Secure(cfg)), nil
}

// clientCert reads NATS_CERT and NATS_KEY.
func (c Config) clientCert() (*tls.Certificate, error) {
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
	return &pair, nil
}

// clientCertAgain reads the certificate and key again for each handshake,
// so that replaced files are used from the next connection on. While they
// cannot be read or do not match (caught between the two files' writes),
// the last pair read is used, as it was until then.
func (c Config) clientCertAgain(last *tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	var mu sync.Mutex
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if pair, err := c.clientCert(); err == nil {
			last = pair
		}
		return last, nil
	}
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
