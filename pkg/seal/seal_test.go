package seal

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func newSealer(t *testing.T) *Sealer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "seal.key")
	if err := GenerateKeyFile(path); err != nil {
		t.Fatalf("GenerateKeyFile: %v", err)
	}
	s, err := LoadKey(path)
	if err != nil {
		t.Fatalf("LoadKey: %v", err)
	}
	return s
}

func TestRoundTrip(t *testing.T) {
	s := newSealer(t)
	tests := []struct {
		name      string
		plaintext []byte
		aad       []byte
	}{
		{"password", []byte("hunter2"), []byte("credentials/abc")},
		{"empty plaintext", nil, []byte("credentials/abc")},
		{"no aad", []byte("-----BEGIN OPENSSH PRIVATE KEY-----"), nil},
		{"binary", bytes.Repeat([]byte{0, 1, 2, 0xff}, 1024), []byte{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, err := s.Seal(tt.plaintext, tt.aad)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if len(tt.plaintext) > 3 && bytes.Contains(sealed, tt.plaintext) {
				t.Fatal("sealed value contains the plaintext")
			}
			got, err := s.Open(sealed, tt.aad)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tt.plaintext) {
				t.Fatalf("Open = %q, want %q", got, tt.plaintext)
			}
		})
	}
}

func TestSealUsesFreshNonce(t *testing.T) {
	s := newSealer(t)
	a, _ := s.Seal([]byte("same"), nil)
	b, _ := s.Seal([]byte("same"), nil)
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are identical")
	}
}

func TestOpenRejects(t *testing.T) {
	s := newSealer(t)
	other := newSealer(t)
	aad := []byte("credentials/abc")
	sealed, err := s.Seal([]byte("hunter2"), aad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		c := bytes.Clone(sealed)
		c[i] ^= 0x01
		return c
	}
	tests := []struct {
		name   string
		s      *Sealer
		sealed []byte
		aad    []byte
		want   error
	}{
		{"tampered nonce", s, flip(0), aad, ErrOpen},
		{"tampered ciphertext", s, flip(13), aad, ErrOpen},
		{"tampered tag", s, flip(len(sealed) - 1), aad, ErrOpen},
		{"truncated", s, sealed[:len(sealed)-1], aad, ErrOpen},
		{"too short", s, sealed[:10], aad, ErrShort},
		{"wrong key", other, sealed, aad, ErrOpen},
		{"aad mismatch", s, sealed, []byte("credentials/xyz"), ErrOpen},
		{"aad missing", s, sealed, nil, ErrOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.s.Open(tt.sealed, tt.aad)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open error = %v, want %v", err, tt.want)
			}
			if got != nil {
				t.Fatalf("Open returned plaintext %q on failure", got)
			}
		})
	}
}

func TestGenerateKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "seal.key")
	if err := GenerateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Fatalf("key file mode = %o, want 600", mode)
	}
	before, _ := os.ReadFile(path)
	if err := GenerateKeyFile(path); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second GenerateKeyFile error = %v, want ErrKeyExists", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("existing key file was overwritten")
	}
}

// TestGenerateKeyFileRace: callers that each make the key unless it
// exists and then load it, all at once (an agent's jobs starting
// together), all load the same whole key, and no temporary file is left.
func TestGenerateKeyFileRace(t *testing.T) {
	for round := range 100 {
		dir := t.TempDir()
		path := filepath.Join(dir, "seal.key")
		const callers = 8
		fps := make([]string, callers)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := GenerateKeyFile(path); err != nil && !errors.Is(err, ErrKeyExists) {
					errs[i] = err
					return
				}
				s, err := LoadKey(path)
				if err != nil {
					errs[i] = err
					return
				}
				fps[i] = s.Fingerprint([]byte("x"))
			}()
		}
		wg.Wait()
		for i := range callers {
			if errs[i] != nil {
				t.Fatalf("round %d, caller %d: %v", round, i, errs[i])
			}
			if fps[i] != fps[0] {
				t.Fatalf("round %d: callers loaded different keys", round)
			}
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Fatalf("round %d: the directory holds %d files, want the key alone", round, len(entries))
		}
	}
}

func TestLoadKeyFormats(t *testing.T) {
	dir := t.TempDir()
	raw := bytes.Repeat([]byte{0x42}, KeySize)
	hexKey := strings.Repeat("42", KeySize)
	tests := []struct {
		name    string
		content []byte
		wantErr bool
	}{
		{"raw", raw, false},
		{"hex", []byte(hexKey), false},
		{"hex newline", []byte(hexKey + "\n"), false},
		{"hex upper", []byte(strings.ToUpper(hexKey)), false},
		{"short", raw[:31], true},
		{"long", append(bytes.Clone(raw), 0), true},
		{"bad hex", []byte(strings.Repeat("zz", KeySize)), true},
		{"empty", nil, true},
	}
	ref, _ := New(raw)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := LoadKey(path)
			if tt.wantErr {
				if !errors.Is(err, ErrBadKey) {
					t.Fatalf("LoadKey error = %v, want ErrBadKey", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadKey: %v", err)
			}
			sealed, _ := ref.Seal([]byte("x"), nil)
			if _, err := s.Open(sealed, nil); err != nil {
				t.Fatalf("key loaded from %s differs from the reference key: %v", tt.name, err)
			}
		})
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadKey of a missing file: %v, want ErrNotExist", err)
	}
}

// TestFingerprint: a fingerprint is keyed by the seal key (another key
// gives another value), is not the unkeyed SHA-256 of the secret, and is
// the same for the same secret and key.
func TestFingerprint(t *testing.T) {
	a, b := newSealer(t), newSealer(t)
	secret := []byte("hunter2")
	fa := a.Fingerprint(secret)
	if len(fa) != FingerprintLength || fa != a.Fingerprint(secret) {
		t.Fatalf("fingerprint %q not stable or not %d digits", fa, FingerprintLength)
	}
	if fa == b.Fingerprint(secret) {
		t.Fatal("two seal keys give the same fingerprint")
	}
	if fa == a.Fingerprint([]byte("hunter3")) {
		t.Fatal("two secrets give the same fingerprint")
	}
	sum := sha256.Sum256(secret)
	if fa == hex.EncodeToString(sum[:])[:FingerprintLength] {
		t.Fatal("the fingerprint is the unkeyed SHA-256 of the secret")
	}
}
