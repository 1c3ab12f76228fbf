package ledger

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// IsWarm reports whether a job runs precopy rounds (options.mode WARM).
func IsWarm(j *ferryv1.MigrationJob) bool {
	return j.GetOptions().GetMode() == ferryv1.MigrationMode_MIGRATION_MODE_WARM
}

// SetMigrationJobCutover sets when a queued or running warm job cuts over.
func (l *Ledger) SetMigrationJobCutover(c *ledgerv1.SetMigrationJobCutover, now time.Time) error {
	if err := l.cutoverRefusal(c.GetName()); err != nil {
		return err
	}
	return l.updateJob(c.GetName(), now, func(j *ferryv1.MigrationJob) error {
		if j.Options == nil {
			j.Options = &ferryv1.MigrationOptions{}
		}
		j.Options.CutoverTime = c.GetCutoverTime()
		return nil
	})
}

// cutoverRefusal says why a job cannot be cut over: it is not warm, or
// not queued or running.
func (l *Ledger) cutoverRefusal(name string) error {
	l.mu.RLock()
	j, ok := l.jobs[name]
	l.mu.RUnlock()
	if !ok {
		return fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	if !IsWarm(j) {
		return fmt.Errorf("%w: job %s is not warm (options.mode %s); only a job created with mode WARM cuts over",
			ErrFailedPrecondition, name, j.GetOptions().GetMode())
	}
	if s := j.GetState(); s != stateQueued && s != stateRunning {
		return fmt.Errorf("%w: job %s is %s; only a queued or running job cuts over", ErrFailedPrecondition, name, s)
	}
	return nil
}

// setRounds records an agent's precopy rounds when it reports any.
func setRounds(j *ferryv1.MigrationJob, rs []*ferryv1.PrecopyRound) {
	if len(rs) == 0 {
		return
	}
	j.PrecopyRounds = make([]*ferryv1.PrecopyRound, len(rs))
	for i, r := range rs {
		j.PrecopyRounds[i] = proto.Clone(r).(*ferryv1.PrecopyRound)
	}
}
