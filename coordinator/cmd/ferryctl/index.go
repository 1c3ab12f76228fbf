package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferry-v2v/ferry/pkg/client"
	"github.com/ferry-v2v/ferry/pkg/durable"
)

// envIndexFile names the file ferryctl keeps the cluster's Raft index in
// between runs (--index-file).
const envIndexFile = "FERRY_INDEX_FILE"

// loadIndex raises the client's index to the one saved in --index-file,
// so this run's reads reflect every write an earlier run saw answered.
func (a *app) loadIndex(cl *client.Client) error {
	if a.indexFile == "" {
		return nil
	}
	idx, err := readIndexFile(a.indexFile)
	if err != nil {
		return err
	}
	cl.SeenIndex(idx)
	return nil
}

// saveIndex writes the client's index to --index-file when it is higher
// than the one saved there.
func (a *app) saveIndex(cl *client.Client) error {
	if a.indexFile == "" || cl == nil {
		return nil
	}
	saved, err := readIndexFile(a.indexFile)
	if err != nil {
		return err
	}
	idx := cl.LastIndex()
	if idx <= saved {
		return nil
	}
	if err := durable.WriteFile(a.indexFile, []byte(strconv.FormatUint(idx, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("--index-file: %w", err)
	}
	return nil
}

// readIndexFile returns the index saved in path, 0 when there is none yet.
func readIndexFile(path string) (uint64, error) {
	b, err := os.ReadFile(filepath.Clean(path))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("--index-file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, nil
	}
	idx, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("--index-file %s: %q is not a Raft index", path, s)
	}
	return idx, nil
}
