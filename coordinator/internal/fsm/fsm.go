// Package fsm applies Raft log entries to the ledger. Every entry is one
// ledgerv1.Command; Apply is deterministic: it reads times and identifiers
// from the command and never from the clock, the network or the disk.
package fsm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// ErrUnknownCommand is returned for a command this version cannot apply.
var ErrUnknownCommand = ledger.ErrUnknownCommand

// Result is what Apply returns for every log entry: the names a command
// created or touched, or why it was refused, and the entry's log index.
type Result struct {
	Names []string
	Err   error
	Index uint64
}

// FSM is the raft.FSM (and raft.BatchingFSM) of the coordinator.
type FSM struct {
	ledger   *ledger.Ledger
	log      *slog.Logger
	restores atomic.Int64
	applied  atomic.Uint64

	// appliedMu guards advanced, closed (and replaced) whenever the
	// applied index moves, so WaitApplied can wait for it.
	appliedMu sync.Mutex
	advanced  chan struct{}
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an FSM applying to l.
func New(l *ledger.Ledger, log *slog.Logger) *FSM {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &FSM{ledger: l, log: log.With("component", "fsm"), advanced: make(chan struct{})}
}

// Ledger is the state this FSM applies to.
func (f *FSM) Ledger() *ledger.Ledger { return f.ledger }

// Restores counts snapshot restores, for tests and diagnostics.
func (f *FSM) Restores() int64 { return f.restores.Load() }

// AppliedIndex is the index of the last entry applied: the ledger state
// a read made now reflects at least.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// setApplied records index as applied and wakes WaitApplied.
func (f *FSM) setApplied(index uint64) {
	f.applied.Store(index)
	f.appliedMu.Lock()
	close(f.advanced)
	f.advanced = make(chan struct{})
	f.appliedMu.Unlock()
}

// WaitApplied returns once the applied index is at least index, or ctx's
// error when ctx ends first.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	for {
		f.appliedMu.Lock()
		ch := f.advanced
		f.appliedMu.Unlock()
		if f.applied.Load() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Encode marshals a command for the log.
func Encode(cmd *ledgerv1.Command) ([]byte, error) {
	b, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	return b, nil
}

// Apply applies one log entry and returns a Result. An entry it cannot
// decode, or a command it has no entry for (written by a newer leader),
// stops the node with a panic: skipping it would leave this replica's
// ledger silently different from the others'. Upgrade the node and
// restart it; it replays the log from its last snapshot.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		f.setApplied(l.Index)
		return Result{Index: l.Index}
	}
	var cmd ledgerv1.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		f.log.Error("undecodable log entry; stopping this node", "index", l.Index, "err", err)
		panic(fmt.Sprintf("fsm: undecodable log entry %d: %v", l.Index, err))
	}
	names, err := f.ApplyCommand(&cmd)
	if errors.Is(err, ErrUnknownCommand) {
		panic(fmt.Sprintf("fsm: log entry %d: %v; is this node older than the leader?", l.Index, err))
	}
	f.setApplied(l.Index)
	return Result{Names: names, Err: err, Index: l.Index}
}

// ApplyBatch applies entries in order, one Result each.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	for i, l := range logs {
		out[i] = f.Apply(l)
	}
	return out
}

// ApplyCommand applies one decoded command directly; the FSM tests use it.
func (f *FSM) ApplyCommand(cmd *ledgerv1.Command) ([]string, error) {
	names, err := f.ledger.Apply(cmd)
	if errors.Is(err, ErrUnknownCommand) {
		f.log.Error("cannot apply command; is this node older than the leader?", "err", err)
	}
	return names, err
}

// Snapshot captures the ledger and the index it reflects (Raft calls it
// between applies); Persist writes it outside the apply loop.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	state := f.ledger.Snapshot()
	state.AppliedIndex = f.applied.Load()
	return &snapshot{state: state}, nil
}

// Restore replaces the ledger with a snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	var s ledgerv1.Snapshot
	if err := proto.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	f.ledger.Restore(&s)
	if s.GetAppliedIndex() > 0 {
		f.setApplied(s.GetAppliedIndex())
	}
	f.restores.Add(1)
	f.log.Info("ledger restored from snapshot", "jobs", len(s.GetJobs()), "bytes", len(b))
	return nil
}

type snapshot struct{ state *ledgerv1.Snapshot }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	b, err := proto.Marshal(s.state)
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
