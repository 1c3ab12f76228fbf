package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/durable"
	"github.com/ferry-v2v/ferry/pkg/seal"
)

// WarmRecordPrefix names the record a warm job keeps in the driver's
// StateDir while it has checkpoints on its source VM: written before its
// first checkpoint is made, removed once EndWarm deleted them. A record
// whose job no longer runs here and whose cache directory is gone (the
// coordinator reclaimed it, so the job can neither resume nor restart from
// its rounds) means checkpoints a crash left behind; the janitor deletes
// them. While the cache is there the checkpoints stay: the job resumes
// from its last completed round when it is assigned again.
const WarmRecordPrefix = "ferry-warm-"

func warmRecordID(job *runner.Job) string { return WarmRecordPrefix + path.Base(job.Name()) }

// rememberWarm writes the job's warm record, once, and marks it in use.
func (d *Driver) rememberWarm(job *runner.Job, vm, uuid string) error {
	if d.opts.StateDir == "" {
		return nil
	}
	id := warmRecordID(job)
	d.mu.Lock()
	d.active[id] = true
	d.mu.Unlock()
	file := filepath.Join(d.opts.StateDir, id+".json")
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	a := job.Assignment
	cfg, err := d.config(a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
	if err != nil {
		return err
	}
	s, err := d.sealer()
	if err != nil {
		return fmt.Errorf("source cleanup records: %w", err)
	}
	rec, err := sealedRecord(s, cfg, a.GetMigrationServer().GetMigrationCidr(), id)
	if err != nil {
		return err
	}
	rec.Job, rec.VM, rec.UUID, rec.CheckpointPrefix, rec.CacheDir = job.Name(), vm, uuid, checkpointPrefix(job), job.CacheDir
	data, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(file, data, 0o600); err != nil {
		return fmt.Errorf("source cleanup record: %w", err)
	}
	return nil
}

// forgetWarm removes the job's warm record once its checkpoints are gone
// (deleted) and marks it no longer in use either way.
func (d *Driver) forgetWarm(job *runner.Job, deleted bool) {
	id := warmRecordID(job)
	d.release(id, deleted)
}

// cleanupWarm deletes the checkpoints of a warm record whose cache is
// gone, and reports whether the record can go.
func (d *Driver) cleanupWarm(ctx context.Context, s *seal.Sealer, id, file string) (bool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return false, err
	}
	var rec leftover
	if err := json.Unmarshal(data, &rec); err != nil {
		return false, fmt.Errorf("parse %s: %w", file, err)
	}
	if _, err := os.Stat(rec.CacheDir); !errors.Is(err, fs.ErrNotExist) {
		return false, nil // the job may resume or restart from its rounds
	}
	conn, err := d.connectRecord(ctx, s, id, rec)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	dom, err := conn.virt.LookupDomainByUUIDString(rec.UUID)
	if isNoDomain(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up VM %s: %w", rec.VM, err)
	}
	defer dom.Free()
	if err := deleteCheckpoints(ctx, conn, dom, rec.VM, rec.CheckpointPrefix, "", d.log); err != nil {
		return false, err
	}
	d.log.Info("deleted the checkpoints a crashed warm job left on the source", "vm", rec.VM, "job", rec.Job)
	return true, nil
}
