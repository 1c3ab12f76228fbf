// Package durable writes small files that must survive a crash whole:
// checkpoints, records of work to undo, generation stamps.
package durable

import (
	"errors"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data so that, after a crash at any moment,
// path holds either its former content or data, never a part: the bytes
// go to path+".tmp" (mode perm), which is synced and renamed over path,
// and then path's directory is synced so the rename itself is on disk.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir syncs a directory, making the entries created, renamed or
// removed in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
