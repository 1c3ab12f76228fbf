package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// PreparedPath is where PREPARING leaves the converted guest's disk: a
// qcow2 overlay whose backing file is the cache image of disk, so that a
// conversion changes nothing CONVERTING made. When it exists, the upload
// exports it instead of the cache image, whole.
func PreparedPath(dir, disk string) string { return filepath.Join(dir, disk+".prepared.qcow2") }

// Prepared says whether disk has a converted overlay in dir.
func Prepared(dir, disk string) bool {
	_, err := os.Stat(PreparedPath(dir, disk))
	return err == nil
}

// ImagePath is the cache image CONVERTING made of disk in dir and its
// format (FormatQcow2 or FormatRaw).
func ImagePath(dir, disk string) (path, format string, err error) {
	for _, format := range []string{FormatQcow2, FormatRaw} {
		path := filepath.Join(dir, disk+"."+format)
		if _, err := os.Stat(path); err == nil {
			return path, format, nil
		}
	}
	return "", "", fmt.Errorf("cache: no image of disk %s in %s: %w", disk, dir, fs.ErrNotExist)
}

// RemovePrepared removes the converted overlay of disk, if any.
func RemovePrepared(dir, disk string) error {
	if err := os.Remove(PreparedPath(dir, disk)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache: remove the converted image of disk %s: %w", disk, err)
	}
	return nil
}
