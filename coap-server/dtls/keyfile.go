package dtls

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/google/renameio/v2"
)

// KeyFile keeps the known keys on disk, sealed, so that a restart while
// the database is down still lets known devices in (the cache serves them
// stale until the database answers). The file is AES-256-GCM under a key
// derived (HKDF-SHA256) from a secret the process already holds: the
// database credential (DATABASE_URL, or SUPABASE_SERVICE_KEY), which reads
// every key from device_credentials anyway. So the file gives nothing to
// whoever holds the environment that the environment does not, and
// nothing to whoever holds only the volume (a snapshot, a backup). A
// rotated credential makes the file unreadable: it is then ignored (logged)
// and rewritten at the next save.
type KeyFile struct {
	path string
	aead cipher.AEAD
}

const (
	keyFileName = "dtls-keys.sealed"
	keyFileInfo = "nbiot-live dtls key file v1"
	// maxKeyFileBytes bounds what Load reads: 100,000 keys (MaxEntries'
	// default) of a 64-byte identity and a 64-byte key, with framing.
	maxKeyFileBytes = 16 << 20
	maxPSKLen       = 64 // device_credentials.psk: 16 to 64 bytes
)

// ErrKeyFileSealed: the file was sealed under another secret, or changed.
var ErrKeyFileSealed = errors.New("dtls: key file does not open with this secret (credential rotated?)")

// NewKeyFile returns the key file in dir, sealed under secret.
func NewKeyFile(dir string, secret []byte) (*KeyFile, error) {
	if len(secret) == 0 {
		return nil, errors.New("dtls: key file needs a secret")
	}
	key, err := hkdf.Key(sha256.New, secret, nil, keyFileInfo, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &KeyFile{path: filepath.Join(dir, keyFileName), aead: aead}, nil
}

// Save replaces the file with keys, atomically (a crash leaves the old
// file or the new one).
func (f *KeyFile) Save(keys map[string][]byte) error {
	ids := make([]string, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var plain []byte
	for _, id := range ids {
		plain = binary.AppendUvarint(plain, uint64(len(id)))
		plain = append(plain, id...)
		plain = binary.AppendUvarint(plain, uint64(len(keys[id])))
		plain = append(plain, keys[id]...)
	}
	nonce := make([]byte, f.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	sealed := f.aead.Seal(nonce, nonce, plain, []byte(keyFileInfo))
	clear(plain)
	// A temporary file of its own, synced, then renamed over the old:
	// instances sharing DATA_DIR (NATS_URL) save at the same time.
	if err := renameio.WriteFile(f.path, sealed, 0o600); err != nil {
		return fmt.Errorf("dtls: key file: %w", err)
	}
	return nil
}

// Load reads the keys saved last. A missing file is os.ErrNotExist; one
// sealed under another secret is ErrKeyFileSealed.
func (f *KeyFile) Load() (map[string][]byte, error) {
	fh, err := os.Open(f.path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	sealed, err := io.ReadAll(io.LimitReader(fh, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("dtls: key file: %w", err)
	}
	n := f.aead.NonceSize()
	if len(sealed) > maxKeyFileBytes || len(sealed) < n {
		return nil, ErrKeyFileSealed
	}
	plain, err := f.aead.Open(nil, sealed[:n], sealed[n:], []byte(keyFileInfo))
	if err != nil {
		return nil, ErrKeyFileSealed
	}
	return parseKeyFile(plain)
}

// parseKeyFile decodes what Save sealed: (uvarint length, identity,
// uvarint length, key) repeated. Identities are checked as handshakes
// check them; anything else is an error.
func parseKeyFile(b []byte) (map[string][]byte, error) {
	keys := make(map[string][]byte)
	next := func(limit uint64) ([]byte, error) {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > limit || l > uint64(len(b)-n) {
			return nil, errors.New("dtls: key file: bad length")
		}
		v := b[n : n+int(l)]
		b = b[n+int(l):]
		return v, nil
	}
	for len(b) > 0 {
		id, err := next(64)
		if err != nil {
			return nil, err
		}
		psk, err := next(maxPSKLen)
		if err != nil {
			return nil, err
		}
		device, err := ParseIdentity(id)
		if err != nil || len(psk) == 0 {
			return nil, errors.New("dtls: key file: bad entry")
		}
		keys[device] = append([]byte(nil), psk...)
	}
	return keys, nil
}
