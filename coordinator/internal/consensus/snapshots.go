package consensus

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// privateSnapshots is Raft's FileSnapshotStore with its directories mode
// 0700 and its files 0600, like the rest of the data directory: a
// snapshot holds the whole ledger, sealed credentials included. The
// store itself makes them 0755 and 0644 (less the umask), so each
// snapshot is restricted as soon as it is created and again once it is
// complete.
type privateSnapshots struct {
	*raft.FileSnapshotStore
	dir string // DataDir/snapshots
}

func openSnapshots(dataDir string, retain int, logger hclog.Logger) (*privateSnapshots, error) {
	inner, err := raft.NewFileSnapshotStoreWithLogger(dataDir, retain, logger)
	if err != nil {
		return nil, err
	}
	s := &privateSnapshots{FileSnapshotStore: inner, dir: filepath.Join(dataDir, "snapshots")}
	// Also what an earlier version left readable.
	if err := restrictTree(s.dir); err != nil {
		return nil, err
	}
	return s, nil
}

// Create starts a snapshot in a directory only this user can enter.
func (s *privateSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.FileSnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	if err := restrictTree(filepath.Join(s.dir, sink.ID()+".tmp")); err != nil {
		_ = sink.Cancel()
		return nil, err
	}
	return &privateSink{SnapshotSink: sink, final: filepath.Join(s.dir, sink.ID())}, nil
}

// privateSink restricts the finished snapshot, whose metadata the store
// rewrites when it closes.
type privateSink struct {
	raft.SnapshotSink
	final string
}

func (s *privateSink) Close() error {
	if err := s.SnapshotSink.Close(); err != nil {
		return err
	}
	return restrictTree(s.final)
}

// restrictTree makes root and everything under it private: directories
// 0700, files 0600.
func restrictTree(root string) error {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o600)
		if d.IsDir() {
			mode = 0o700
		}
		return os.Chmod(p, mode)
	})
	if err != nil {
		return fmt.Errorf("restrict snapshot files: %w", err)
	}
	return nil
}
