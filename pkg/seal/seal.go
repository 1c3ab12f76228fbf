// Package seal encrypts secrets with AES-256-GCM before they leave the
// process that holds the key: credentials are sealed before they are proposed
// to the Raft log and opened only where they are used.
//
// A sealed value is nonce || ciphertext || tag. The nonce is random (12 bytes)
// and a fresh one is drawn for every Seal. Additional authenticated data binds a
// sealed value to its context (for example the resource name it belongs to), so
// a ciphertext copied onto another record fails to open.
package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ferry-v2v/ferry/pkg/durable"
)

// KeySize is the length of an AES-256 key in bytes.
const KeySize = 32

var (
	// ErrBadKey reports a key file that is neither 32 raw bytes nor 64 hex digits.
	ErrBadKey = errors.New("seal: key must be 32 raw bytes or 64 hex digits")
	// ErrKeyExists reports that GenerateKeyFile would overwrite an existing file.
	ErrKeyExists = errors.New("seal: key file already exists")
	// ErrOpen reports a sealed value that does not authenticate: it was
	// tampered with, sealed under another key, or with other associated data.
	ErrOpen = errors.New("seal: message authentication failed")
	// ErrShort reports a sealed value shorter than a nonce plus a tag.
	ErrShort = errors.New("seal: sealed value too short")
)

// Sealer seals and opens values with one AES-256-GCM key. It is safe for
// concurrent use.
type Sealer struct {
	aead cipher.AEAD
	// fingerprintKey keys Fingerprint's HMAC. It is derived from the seal
	// key with HKDF-SHA256 under its own label, so the AES key itself is
	// never used for anything but AES-GCM.
	fingerprintKey []byte
}

// fingerprintInfo is the HKDF label of the fingerprint key.
const fingerprintInfo = "ferry seal: credential fingerprint v1"

// FingerprintLength is the length of a fingerprint in hex digits.
const FingerprintLength = 16

// Fingerprint returns a short value that tells secrets apart without
// revealing them: the first 64 bits, in hex, of HMAC-SHA256 of the secret
// under a key derived from the seal key. Without the seal key it cannot be
// computed, so it is no oracle for guessing a secret offline; the same
// secret under the same seal key always has the same fingerprint.
func (s *Sealer) Fingerprint(secret []byte) string {
	m := hmac.New(sha256.New, s.fingerprintKey)
	m.Write(secret)
	return hex.EncodeToString(m.Sum(nil))[:FingerprintLength]
}

// New returns a Sealer for a 32-byte key.
func New(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, ErrBadKey
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	fp, err := hkdf.Key(sha256.New, key, nil, fingerprintInfo, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("seal: derive the fingerprint key: %w", err)
	}
	return &Sealer{aead: aead, fingerprintKey: fp}, nil
}

// LoadKey reads a key file written by GenerateKeyFile (64 hex digits, optional
// trailing newline) or holding exactly 32 raw bytes, and returns its Sealer.
func LoadKey(path string) (*Sealer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key %s: %w", path, err)
	}
	key, err := decodeKey(data)
	if err != nil {
		return nil, fmt.Errorf("load key %s: %w", path, err)
	}
	return New(key)
}

func decodeKey(data []byte) ([]byte, error) {
	if trimmed := bytes.TrimSpace(data); len(trimmed) == 2*KeySize {
		key := make([]byte, KeySize)
		if _, err := hex.Decode(key, trimmed); err == nil {
			return key, nil
		}
	}
	if len(data) == KeySize {
		return data, nil
	}
	return nil, ErrBadKey
}

// GenerateKeyFile writes 32 random bytes, hex-encoded with a trailing newline,
// to a new file at path with mode 0600. It refuses to overwrite an existing
// file (ErrKeyExists) and creates missing parent directories with mode 0700.
//
// The file appears whole or not at all: the key is written and synced under
// a temporary name and then linked to path (a link never replaces a file),
// so a caller that finds the file (ErrKeyExists) and loads it, while another
// makes it, reads the whole key, and a crash never leaves a short key file
// that every later load refuses. Seen: an agent's three jobs starting
// together, one loading the source-cleanup key another had created but not
// yet written ("key must be 32 raw bytes").
func GenerateKeyFile(path string) error {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("generate key %s: %w", path, err)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("generate key %s: %w", path, ErrKeyExists)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".new-*")
	if err != nil {
		return fmt.Errorf("generate key %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	enc := make([]byte, 2*KeySize+1)
	hex.Encode(enc, key)
	enc[len(enc)-1] = '\n'
	_, err = f.Write(enc)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("generate key %s: %w", path, err)
	}
	if err := os.Link(tmp, path); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("generate key %s: %w", path, ErrKeyExists)
	} else if err != nil {
		return fmt.Errorf("generate key %s: %w", path, err)
	}
	if err := durable.SyncDir(dir); err != nil {
		return fmt.Errorf("generate key %s: %w", path, err)
	}
	return nil
}

// Seal encrypts plaintext and authenticates it together with aad. The result
// is a fresh random nonce followed by the ciphertext and tag.
func (s *Sealer) Seal(plaintext, aad []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	out := make([]byte, ns, ns+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return s.aead.Seal(out, out[:ns], plaintext, aad), nil
}

// Open authenticates and decrypts a value returned by Seal with the same aad.
// It returns ErrShort or ErrOpen when the value does not authenticate.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < ns+s.aead.Overhead() {
		return nil, ErrShort
	}
	plain, err := s.aead.Open(nil, sealed[:ns], sealed[ns:], aad)
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}
