// Package bundle reads, writes, signs and verifies export bundles: one
// directory per VM holding its disks and ferry-bundle.json, the VM's
// description in the API's own schema (ferry.v1.SourceVm and TargetVm),
// each disk's SHA-256 as a guest reads it and as a file, the source it
// came from and the Ferry version that wrote it, signed with the
// coordinator cluster's Ed25519 key.
//
// The file is {"manifest": {...}, "signature": {...}}; the signature is
// over the manifest's bytes exactly as they stand in the file (after the
// prefix "ferry-bundle/1\n"), so any change to a manifest field, its
// order or spacing breaks it. Verify checks the signature, then every
// file the manifest names, and says which file failed.
package bundle

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// ManifestFile is the bundle's description, in the bundle's directory.
const ManifestFile = "ferry-bundle.json"

// Format names this layout; it prefixes the signed bytes.
const Format = "ferry-bundle/1"

// Manifest is what a bundle says of itself.
type Manifest struct {
	Format       string `json:"format"`
	FerryVersion string `json:"ferry_version"`
	// CreateTime is RFC 3339, when the bundle was completed.
	CreateTime string `json:"create_time"`
	// Job is the export job that wrote it (migrationJobs/{id}).
	Job    string `json:"job"`
	Source Source `json:"source"`
	// VM is the source VM (ferry.v1.SourceVm, protojson) and Target the
	// VM it describes in ferry.v1.TargetVm's schema (name, vCPUs, memory,
	// firmware, disks in order with their buses, NICs with their MACs
	// and models, machine type), as an import fills a job from.
	VM     json.RawMessage `json:"vm"`
	Target json.RawMessage `json:"target"`
	// Disks in the VM's order: the boot disk first.
	Disks []Disk `json:"disks"`
	// NVRAM is a UEFI VM's variable store, when it has one.
	NVRAM *File `json:"nvram,omitempty"`
}

// Source is where the VM came from.
type Source struct {
	// Name is the source resource (sources/{source}) of the exporting
	// cluster, Type its platform (PLATFORM_KVM, PLATFORM_VMWARE).
	Name    string `json:"name"`
	Type    string `json:"type"`
	Address string `json:"address,omitempty"`
	// VM is the job's source_vm.
	VM string `json:"vm"`
}

// Disk is one disk of the bundle.
type Disk struct {
	// File is its name in the bundle's directory.
	File string `json:"file"`
	// SourceDisk is the disk's target device at the source (vda) or
	// VMware disk key: TargetDisk.source_disk.
	SourceDisk string `json:"source_disk"`
	// Format is qcow2, raw, vmdk (streamOptimized) or vhdx.
	Format string `json:"format"`
	// Order is the disk's place, 0 first; Boot marks the disk that boots.
	Order int  `json:"order"`
	Boot  bool `json:"boot"`
	// Bus is the disk's bus at the source (virtio, scsi, sata, ide).
	Bus       string `json:"bus,omitempty"`
	SizeBytes int64  `json:"size_bytes"`
	// SHA256 is of the disk's content as a guest reads it: SizeBytes
	// bytes, what `qemu-img convert -O raw` writes. FileSHA256 and
	// FileBytes are of the file itself.
	SHA256     string `json:"sha256"`
	FileSHA256 string `json:"file_sha256"`
	FileBytes  int64  `json:"file_bytes"`
}

// File is a plain file of the bundle.
type File struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
}

// Signature signs a manifest.
type Signature struct {
	// Algorithm is "ed25519".
	Algorithm string `json:"algorithm"`
	// KeyID is KeyID(PublicKey); PublicKey and Value are base64.
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key"`
	Value     string `json:"value"`
}

// file is ferry-bundle.json.
type file struct {
	Manifest  json.RawMessage `json:"manifest"`
	Signature Signature       `json:"signature"`
}

// KeyID names a public key: the first 16 hex digits of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// EncodeKey and DecodeKey turn a public key into its base64 form and back.
func EncodeKey(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// DecodeKey parses a base64 Ed25519 public key.
func DecodeKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key: %d bytes, want %d", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

func signed(manifest []byte) []byte {
	return append([]byte(Format+"\n"), manifest...)
}

// Encode signs m with key and returns ferry-bundle.json's bytes: Marshal,
// Sign and Assemble in one process (tests, tools holding the key).
func Encode(m *Manifest, key ed25519.PrivateKey) ([]byte, error) {
	body, err := Marshal(m)
	if err != nil {
		return nil, err
	}
	return Assemble(body, key.Public().(ed25519.PublicKey), Sign(body, key))
}

// Marshal returns m's bytes as they stand in ferry-bundle.json: what is
// signed (the agent sends them to the leader, which signs them).
func Marshal(m *Manifest) ([]byte, error) {
	if m.Format == "" {
		m.Format = Format
	}
	body, err := json.MarshalIndent(m, "  ", "  ")
	if err != nil {
		return nil, fmt.Errorf("bundle manifest: %w", err)
	}
	return body, nil
}

// Sign signs a manifest's bytes (Marshal's) with key.
func Sign(body []byte, key ed25519.PrivateKey) []byte {
	return ed25519.Sign(key, signed(body))
}

// ParseManifest reads a manifest's bytes (Marshal's), unsigned, and
// checks its format: what a signer reads before it signs them.
func ParseManifest(body []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if dec.More() {
		return nil, errors.New("manifest: data after the manifest")
	}
	if m.Format != Format {
		return nil, fmt.Errorf("manifest format %q, want %q", m.Format, Format)
	}
	return &m, nil
}

// Assemble returns ferry-bundle.json's bytes from a manifest's bytes and
// their signature by pub, which must hold.
func Assemble(body []byte, pub ed25519.PublicKey, sig []byte) ([]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key: %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	if !ed25519.Verify(pub, signed(body), sig) {
		return nil, fmt.Errorf("the signature of key %s does not match the manifest", KeyID(pub))
	}
	s := Signature{Algorithm: "ed25519", KeyID: KeyID(pub), PublicKey: EncodeKey(pub),
		Value: base64.StdEncoding.EncodeToString(sig)}
	sb, err := json.MarshalIndent(s, "  ", "  ")
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	out.WriteString("{\n  \"manifest\": ")
	out.Write(body)
	out.WriteString(",\n  \"signature\": ")
	out.Write(sb)
	out.WriteString("\n}\n")
	return out.Bytes(), nil
}

// Decode checks ferry-bundle.json's signature and returns its manifest.
// With want set, the bundle must be signed by that key; without, the key
// the bundle carries is taken, which proves the manifest is whole but
// not who signed it.
func Decode(b []byte, want ed25519.PublicKey) (*Manifest, *Signature, error) {
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, nil, fmt.Errorf("not a bundle manifest: %w", err)
	}
	if len(f.Manifest) == 0 {
		return nil, nil, errors.New("no manifest")
	}
	if f.Signature.Algorithm != "ed25519" {
		return nil, nil, fmt.Errorf("signature algorithm %q, want ed25519", f.Signature.Algorithm)
	}
	pub, err := DecodeKey(f.Signature.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("signature: %w", err)
	}
	if want != nil && !pub.Equal(want) {
		return nil, nil, fmt.Errorf("signed by key %s, not by the expected key %s", KeyID(pub), KeyID(want))
	}
	sig, err := base64.StdEncoding.DecodeString(f.Signature.Value)
	if err != nil || !ed25519.Verify(pub, signed(f.Manifest), sig) {
		return nil, nil, fmt.Errorf("signature of key %s does not match the manifest (changed after it was signed)", KeyID(pub))
	}
	var m Manifest
	if err := json.Unmarshal(f.Manifest, &m); err != nil {
		return nil, nil, fmt.Errorf("manifest: %w", err)
	}
	if m.Format != Format {
		return nil, nil, fmt.Errorf("manifest format %q, want %q", m.Format, Format)
	}
	return &m, &f.Signature, nil
}
