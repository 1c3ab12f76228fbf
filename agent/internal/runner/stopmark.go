package runner

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-v2v/ferry/pkg/durable"
)

// sourceStoppedFile, in a warm job's cache directory, records that the
// cutover stopped the source VM, and how: an agent killed in the cutover
// and back finds the VM off (or paused) and must still know it stopped
// it, to start it again if the cutover then fails, and when, for the
// measured downtime.
const sourceStoppedFile = "source-stopped"

// MarkSourceStopped records durably in the job's cache directory that
// the source driver is about to stop the source VM, the way how says
// (a word of the driver's: "shut-off", "paused"). It is written before
// the stop, so that no stop goes unrecorded; a record of a stop that did
// not happen is harmless (the VM is found running).
func (j *Job) MarkSourceStopped(how string) error {
	if j.CacheDir == "" {
		return nil
	}
	if err := durable.WriteFile(filepath.Join(j.CacheDir, sourceStoppedFile), []byte(how+"\n"), 0o600); err != nil {
		return fmt.Errorf("record that the cutover stops the source VM: %w", err)
	}
	return nil
}

// SourceStoppedMark returns the record of MarkSourceStopped: how the
// source was stopped and when (the record's time), ok false without one.
func (j *Job) SourceStoppedMark() (how string, at time.Time, ok bool) {
	if j.CacheDir == "" {
		return "", time.Time{}, false
	}
	f, err := os.Open(filepath.Join(j.CacheDir, sourceStoppedFile))
	if err != nil {
		return "", time.Time{}, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", time.Time{}, false
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "", time.Time{}, false
	}
	return strings.TrimSpace(string(b)), fi.ModTime(), true
}

// UnmarkSourceStopped removes the record of MarkSourceStopped.
func (j *Job) UnmarkSourceStopped() error {
	if j.CacheDir == "" {
		return nil
	}
	err := os.Remove(filepath.Join(j.CacheDir, sourceStoppedFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the record that the cutover stopped the source VM: %w", err)
	}
	return nil
}
