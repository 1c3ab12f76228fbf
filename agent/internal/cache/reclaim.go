package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// MarkerFile marks a directory under the cache path as a job's cache that
// Ferry made: Reclaim removes nothing without it.
const MarkerFile = ".ferry-job-cache"

// MakeJobDir creates the cache directory of a job (mode 0750) and marks
// it as Ferry's, so that Reclaim may remove it once past retention. A
// directory that exists already (the job restarted) is marked too.
func MakeJobDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("cache: job directory: %w", err)
	}
	marker := filepath.Join(dir, MarkerFile)
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	if err := os.WriteFile(marker, []byte("a Ferry job's cache; removed once past the cache retention\n"), 0o600); err != nil {
		return fmt.Errorf("cache: mark job directory: %w", err)
	}
	return nil
}

// Reclaim removes the job directories under cachePath whose last change
// (the directory or any file in it) is older than retention, unless keep
// says the job still needs its cache. Only directories MakeJobDir made
// (they hold MarkerFile) are touched: an operator's directory that
// happens to sit under the cache path is left alone, however old. A
// qemu-nbd an earlier agent left serving an image there is stopped
// first. It returns the job IDs removed and goes on past a directory it
// cannot remove.
func Reclaim(cachePath string, retention time.Duration, keep func(jobID string) bool) ([]string, error) {
	entries, err := os.ReadDir(cachePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache: reclaim: %w", err)
	}
	cutoff := time.Now().Add(-retention)
	var removed []string
	var errs []error
	for _, e := range entries {
		job := e.Name()
		if !e.IsDir() || (keep != nil && keep(job)) {
			continue
		}
		dir := filepath.Join(cachePath, job)
		if fi, err := os.Lstat(filepath.Join(dir, MarkerFile)); err != nil || !fi.Mode().IsRegular() {
			continue // not a cache Ferry made
		}
		last, err := lastChange(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if last.After(cutoff) {
			continue
		}
		if err := removeJob(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, job)
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("cache: reclaim: %w", err)
	}
	return removed, nil
}

// lastChange is the newest modification time of dir and its entries.
func lastChange(dir string) (time.Time, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return time.Time{}, err
	}
	last := fi.ModTime()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return time.Time{}, err
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.ModTime().After(last) {
			last = info.ModTime()
		}
	}
	return last, nil
}

// removeJob stops the servers recorded in dir (cache images and their
// exports), then removes it.
func removeJob(dir string) error {
	pids, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	for _, pidFile := range pids {
		if err := StopStale(pidFile, dir+string(filepath.Separator)); err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
}

// ReclaimInterval is how often RunReclaim looks for caches past retention.
const ReclaimInterval = 10 * time.Minute

// RunReclaim removes, every interval until ctx ends, the caches under
// dirs of jobs that held does not name and that are older than
// retention() (the cluster's setting, as the agent last heard it; 0 or
// less reclaims nothing). Only job directories MakeJobDir made are
// candidates; anything else under a cache path is left alone.
func RunReclaim(ctx context.Context, dirs []string, interval time.Duration, retention func() time.Duration,
	held func() []string, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		keep := map[string]bool{}
		for _, id := range held() {
			keep[id] = true
		}
		for _, dir := range dirs {
			if dir == "" || retention() <= 0 {
				continue
			}
			removed, err := Reclaim(dir, retention(), func(id string) bool { return keep[id] })
			if err != nil {
				log.Warn("reclaim caches", "dir", dir, "err", err)
			}
			if len(removed) > 0 {
				log.Info("reclaimed caches past retention", "dir", dir, "jobs", removed)
			}
		}
	}
}
