package cache

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protojson"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Files CONVERTING leaves in a job's cache directory for CONFIGURING.
const (
	// SourceVMFile is the source VM as the source described it.
	SourceVMFile = "source-vm.json"
	// NVRAMFile is a copy of a UEFI VM's NVRAM.
	NVRAMFile = "nvram.fd"
)

// SaveSourceVM records the source VM and, when not nil, its NVRAM.
func SaveSourceVM(dir string, vm *ferryv1.SourceVm, nvram []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := protojson.MarshalOptions{Multiline: true}.Marshal(vm)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, SourceVMFile), b, 0o600); err != nil {
		return err
	}
	if nvram == nil {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, NVRAMFile), nvram, 0o600)
}

// LoadSourceVM reads what SaveSourceVM wrote; nvram is nil when there is
// none.
func LoadSourceVM(dir string) (vm *ferryv1.SourceVm, nvram []byte, err error) {
	b, err := os.ReadFile(filepath.Join(dir, SourceVMFile))
	if err != nil {
		return nil, nil, err
	}
	vm = &ferryv1.SourceVm{}
	if err := protojson.Unmarshal(b, vm); err != nil {
		return nil, nil, err
	}
	nvram, err = os.ReadFile(filepath.Join(dir, NVRAMFile))
	if errors.Is(err, fs.ErrNotExist) {
		return vm, nil, nil
	}
	return vm, nvram, err
}
