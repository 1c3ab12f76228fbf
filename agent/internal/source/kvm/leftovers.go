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
	"slices"
	"strings"
	"time"

	"github.com/ferry-v2v/ferry/pkg/durable"
	"github.com/ferry-v2v/ferry/pkg/netsel"
	"github.com/ferry-v2v/ferry/pkg/seal"
)

// A leftover record names a backup begun on a source and not yet ended,
// with what it takes to reach the source again. It is written before the
// backup begins and removed once Backup.Close succeeded, so a record that
// outlives its job means a backup a failure (the source unreachable past
// the retry budget) or a crash left behind; the janitor ends it. Secrets
// in it are sealed with a key kept beside the records (mode 0600).
type leftover struct {
	Job     string   `json:"job"`
	VM      string   `json:"vm"`
	UUID    string   `json:"uuid"`
	Socket  string   `json:"socket"`
	Scratch []string `json:"scratch"`

	Address       string `json:"address"`
	Port          int    `json:"port"`
	User          string `json:"user"`
	PinnedHostKey string `json:"pinned_host_key,omitempty"`
	KnownHostKey  string `json:"known_host_key,omitempty"`
	SASLUser      string `json:"sasl_user,omitempty"`
	MigrationCIDR string `json:"migration_cidr,omitempty"`
	// Sealed holds password, private_key and sasl_password, sealed with
	// the record's ID as associated data.
	Sealed map[string][]byte `json:"sealed"`

	// A warm job's record (WarmRecordPrefix): the prefix of its
	// checkpoints on the VM, and its cache directory, whose presence says
	// the job may still resume or restart from them.
	CheckpointPrefix string `json:"checkpoint_prefix,omitempty"`
	CacheDir         string `json:"cache_dir,omitempty"`
}

const leftoverKeyFile = "seal.key"

// sealer opens or makes the key of the records.
func (d *Driver) sealer() (*seal.Sealer, error) {
	key := filepath.Join(d.opts.StateDir, leftoverKeyFile)
	if err := seal.GenerateKeyFile(key); err != nil && !errors.Is(err, seal.ErrKeyExists) {
		return nil, err
	}
	return seal.LoadKey(key)
}

// remember writes the record of backup b, begun for job over cfg, and
// marks it in use; it returns the record's ID ("" without a StateDir).
func (d *Driver) remember(cfg Config, cidr, job string, b *Backup) (string, error) {
	if d.opts.StateDir == "" {
		return "", nil
	}
	s, err := d.sealer()
	if err != nil {
		return "", fmt.Errorf("source cleanup records: %w", err)
	}
	id := strings.TrimSuffix(path.Base(b.socket), ".sock")
	rec, err := sealedRecord(s, cfg, cidr, id)
	if err != nil {
		return "", err
	}
	rec.Job, rec.VM, rec.UUID, rec.Socket, rec.Scratch = job, b.vm, b.uuid, b.socket, b.scratch
	data, err := json.Marshal(&rec)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	d.active[id] = true
	d.mu.Unlock()
	file := filepath.Join(d.opts.StateDir, id+".json")
	if err := durable.WriteFile(file, data, 0o600); err != nil {
		d.release(id, false)
		return "", fmt.Errorf("source cleanup record: %w", err)
	}
	return id, nil
}

// sealedRecord is a record of how to reach the source of cfg, its
// secrets sealed with id as associated data.
func sealedRecord(s *seal.Sealer, cfg Config, cidr, id string) (leftover, error) {
	rec := leftover{Address: cfg.Address, Port: cfg.Port, User: cfg.User, PinnedHostKey: cfg.PinnedHostKey,
		KnownHostKey: cfg.KnownHostKey, SASLUser: cfg.SASLUser, MigrationCIDR: cidr, Sealed: map[string][]byte{}}
	for k, v := range map[string]seal.Secret{"password": cfg.Password, "private_key": cfg.PrivateKeyPEM, "sasl_password": cfg.SASLPassword} {
		if v.IsZero() {
			continue
		}
		var err error
		if rec.Sealed[k], err = s.Seal([]byte(v.Reveal()), []byte(id)); err != nil {
			return leftover{}, err
		}
	}
	return rec, nil
}

// release marks a record no longer in use and removes it when the backup
// was ended.
func (d *Driver) release(id string, ended bool) {
	if id == "" {
		return
	}
	if ended {
		if err := os.Remove(filepath.Join(d.opts.StateDir, id+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("remove source cleanup record", "record", id, "err", err)
		}
	}
	d.mu.Lock()
	delete(d.active, id)
	d.mu.Unlock()
}

// CleanupLeftovers ends every recorded backup that no running job uses:
// it reconnects to the source, aborts the backup job and removes its
// socket and scratch files, then drops the record. A source still
// unreachable keeps its record for the next round. It returns how many
// backups it ended.
func (d *Driver) CleanupLeftovers(ctx context.Context) (int, error) {
	if d.opts.StateDir == "" {
		return 0, nil
	}
	files, err := filepath.Glob(filepath.Join(d.opts.StateDir, BackupPrefix+"*.json"))
	if err != nil {
		return 0, err
	}
	warm, err := filepath.Glob(filepath.Join(d.opts.StateDir, WarmRecordPrefix+"*.json"))
	if err != nil {
		return 0, err
	}
	files = append(files, warm...)
	if len(files) == 0 {
		return 0, nil
	}
	s, err := d.sealer()
	if err != nil {
		return 0, err
	}
	ended := 0
	var errs []error
	for _, file := range files {
		id := strings.TrimSuffix(filepath.Base(file), ".json")
		d.mu.Lock()
		busy := d.active[id]
		d.mu.Unlock()
		if busy {
			continue
		}
		if strings.HasPrefix(id, WarmRecordPrefix) {
			done, err := d.cleanupWarm(ctx, s, id, file)
			if err != nil {
				errs = append(errs, fmt.Errorf("leftover checkpoints %s: %w", id, err))
			}
			if !done {
				continue
			}
		} else if err := d.cleanupOne(ctx, s, id, file); err != nil {
			errs = append(errs, fmt.Errorf("leftover backup %s: %w", id, err))
			continue
		}
		ended++
		if err := os.Remove(file); err != nil {
			errs = append(errs, err)
		}
	}
	return ended, errors.Join(errs...)
}

// leftoverConnectTimeout bounds each attempt to reach a source again.
const leftoverConnectTimeout = 30 * time.Second

func (d *Driver) cleanupOne(ctx context.Context, s *seal.Sealer, id, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var rec leftover
	if err := json.Unmarshal(data, &rec); err != nil {
		return fmt.Errorf("parse %s: %w", file, err)
	}
	conn, err := d.connectRecord(ctx, s, id, rec)
	if err != nil {
		return err
	}
	defer conn.Close()
	// A snapshot's overlays (among the record's files) are merged back
	// into the VM's original images before they are removed.
	if err := conn.RestoreOriginals(ctx, rec.UUID, func(p string) bool { return slices.Contains(rec.Scratch, p) }); err != nil {
		return err
	}
	b := &Backup{conn: conn, vm: rec.VM, uuid: rec.UUID, socket: rec.Socket, scratch: rec.Scratch,
		log: conn.log.With("vm", rec.VM, "backup", id, "job", rec.Job)}
	if err := b.Close(ctx); err != nil {
		return err
	}
	d.log.Info("ended a backup a failed or crashed job left on the source", "vm", rec.VM, "job", rec.Job, "backup", id)
	return nil
}

// connectRecord reaches the source a record names again.
func (d *Driver) connectRecord(ctx context.Context, s *seal.Sealer, id string, rec leftover) (*Conn, error) {
	var err error
	cfg := Config{Address: rec.Address, Port: rec.Port, User: rec.User, PinnedHostKey: rec.PinnedHostKey,
		KnownHostKey: rec.KnownHostKey, SASLUser: rec.SASLUser, Logger: d.log, KeepaliveInterval: d.opts.KeepaliveInterval, CommitBandwidth: d.opts.CommitBandwidth}
	for k, dst := range map[string]*seal.Secret{"password": &cfg.Password, "private_key": &cfg.PrivateKeyPEM, "sasl_password": &cfg.SASLPassword} {
		if sealed, ok := rec.Sealed[k]; ok {
			plain, err := s.Open(sealed, []byte(id))
			if err != nil {
				return nil, fmt.Errorf("open sealed %s: %w", k, err)
			}
			*dst = seal.Secret(plain)
		}
	}
	if cfg.Dialer, err = netsel.Dialer(rec.MigrationCIDR); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, leftoverConnectTimeout)
	defer cancel()
	return Connect(cctx, cfg)
}

// DefaultJanitorInterval is how often Janitor looks for leftovers.
const DefaultJanitorInterval = 30 * time.Second

// Janitor runs CleanupLeftovers at once (what a crash left before this
// agent started) and then every interval until ctx ends.
func (d *Driver) Janitor(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultJanitorInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if n, err := d.CleanupLeftovers(ctx); err != nil {
			d.log.Warn("source leftovers remain; trying again later", "ended", n, "err", err, "retry_in", interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
