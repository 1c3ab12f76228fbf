package bundle

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Error says which file of a bundle failed and why.
type Error struct {
	// File is the file's path.
	File   string
	Reason string
}

func (e *Error) Error() string { return e.File + ": " + e.Reason }

// Options tune Verify.
type Options struct {
	// PublicKey, when set, is the key the bundle must be signed with.
	PublicKey ed25519.PublicKey
	// Files skips reading the disks' content (their file checksums are
	// still checked), which needs qemu-nbd.
	FilesOnly bool
	// Progress, when set, is told each file as it is checked.
	Progress func(file string)
}

// Read checks the signature of dir's ferry-bundle.json and returns its
// manifest and signature, without reading the disks.
func Read(dir string, want ed25519.PublicKey) (*Manifest, *Signature, error) {
	path := filepath.Join(dir, ManifestFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, &Error{File: path, Reason: err.Error()}
	}
	m, sig, err := Decode(b, want)
	if err != nil {
		return nil, nil, &Error{File: path, Reason: err.Error()}
	}
	for _, d := range m.Disks {
		if err := plainName(d.File); err != nil {
			return nil, nil, &Error{File: path, Reason: err.Error()}
		}
	}
	if m.NVRAM != nil {
		if err := plainName(m.NVRAM.File); err != nil {
			return nil, nil, &Error{File: path, Reason: err.Error()}
		}
	}
	return m, sig, nil
}

// plainName refuses a file name that would leave the bundle's directory.
func plainName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") || name == ManifestFile {
		return fmt.Errorf("file name %q is not a plain name of the bundle's directory", name)
	}
	return nil
}

// Verify checks dir: the manifest's signature, then each disk's file
// checksum and length, then (unless FilesOnly) the SHA-256 of its content
// as a guest reads it and its virtual size, and the NVRAM's checksum. The
// first mismatch is an *Error naming the file.
func Verify(ctx context.Context, dir string, opts Options) (*Manifest, *Signature, error) {
	m, sig, err := Read(dir, opts.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range m.Disks {
		path := filepath.Join(dir, d.File)
		if opts.Progress != nil {
			opts.Progress(path)
		}
		if err := checkFile(path, d.FileSHA256, d.FileBytes); err != nil {
			return nil, nil, err
		}
		if opts.FilesOnly {
			continue
		}
		sum, size, err := HashContent(ctx, path, d.Format)
		if err != nil {
			return nil, nil, &Error{File: path, Reason: err.Error()}
		}
		if size != d.SizeBytes {
			return nil, nil, &Error{File: path, Reason: fmt.Sprintf("virtual size %d bytes, the manifest says %d", size, d.SizeBytes)}
		}
		if sum != d.SHA256 {
			return nil, nil, &Error{File: path, Reason: fmt.Sprintf("SHA-256 of the content is %s, the manifest says %s", sum, d.SHA256)}
		}
	}
	if n := m.NVRAM; n != nil {
		if err := checkFile(filepath.Join(dir, n.File), n.SHA256, n.Bytes); err != nil {
			return nil, nil, err
		}
	}
	return m, sig, nil
}

func checkFile(path, want string, bytes int64) error {
	sum, n, err := HashFile(path)
	if err != nil {
		return &Error{File: path, Reason: err.Error()}
	}
	if n != bytes {
		return &Error{File: path, Reason: fmt.Sprintf("%d bytes, the manifest says %d", n, bytes)}
	}
	if sum != want {
		return &Error{File: path, Reason: fmt.Sprintf("SHA-256 of the file is %s, the manifest says %s", sum, want)}
	}
	return nil
}
