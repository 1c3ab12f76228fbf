package admission

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestAllocationMatchesAScan: through random creations, cancellations,
// restarts and deletions, every batch Create admits gets the addresses a
// scan of the whole range from its start gives (the preview's allocator,
// which keeps no hints), however the hints and the ledger's log of freed
// addresses let Create skip the held ones.
func TestAllocationMatchesAScan(t *testing.T) {
	w := newWorldTo(t, "10.0.0.120")
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(11, 6))
	var queued, cancelled []string
	for step := range 300 {
		switch op := rng.IntN(10); {
		case op < 5 || len(queued) == 0:
			req := request(1 + rng.IntN(6))
			p, err := w.adm.Preview(ctx, &ferryv1.PreviewMigrationJobsRequest{Source: req.GetSource(), MigrationServer: req.GetMigrationServer(), Jobs: req.GetJobs()})
			if err != nil {
				t.Fatalf("step %d: preview: %v", step, err)
			}
			var scan []string
			for _, j := range p.GetJobs() {
				scan = append(scan, j.GetTarget().GetNics()[0].GetIp())
			}
			if len(p.GetFailedChecks()) > 0 {
				if _, err := w.adm.Create(ctx, req); err == nil {
					t.Fatalf("step %d: create admitted a batch the preview found no room for: %v", step, p.GetFailedChecks())
				}
				continue
			}
			ad, err := w.adm.Create(ctx, req)
			if err != nil {
				t.Fatalf("step %d: create: %v", step, err)
			}
			if got := addresses(ad.Command); !slices.Equal(got, scan) {
				t.Fatalf("step %d: create gave %v, a scan of the range %v", step, got, scan)
			}
			queued = append(queued, w.apply(ad.Command)...)
			ad.Release()
		case op < 8:
			i := rng.IntN(len(queued))
			w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: queued[i]}}})
			cancelled = append(cancelled, queued[i])
			queued = slices.Delete(queued, i, i+1)
		case len(cancelled) > 0:
			i := rng.IntN(len(cancelled))
			name := cancelled[i]
			restart := &ledgerv1.Command{Op: &ledgerv1.Command_RestartMigrationJob{RestartMigrationJob: &ledgerv1.RestartMigrationJob{Name: name}}}
			if op == 8 && w.ledger.Refusal(restart) == nil {
				w.apply(restart) // holds its address again
				queued = append(queued, name)
			} else {
				w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_DeleteMigrationJob{DeleteMigrationJob: &ledgerv1.DeleteResource{Name: name}}})
			}
			cancelled = slices.Delete(cancelled, i, i+1)
		}
	}
	if len(queued) < 20 {
		t.Fatalf("only %d jobs queued at the end: the walk covered too little", len(queued))
	}
}

// TestHintsSurviveFreedAddresses: after a job in the middle of the held
// addresses is cancelled, the next batch takes its address and the hint
// still reaches past every held address, so the batch after it does not
// walk the range from its start.
func TestHintsSurviveFreedAddresses(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	create := func(n int) ([]string, []string) {
		t.Helper()
		ad, err := w.adm.Create(ctx, request(n))
		if err != nil {
			t.Fatal(err)
		}
		defer ad.Release()
		return w.apply(ad.Command), addresses(ad.Command)
	}
	names, _ := create(5) // 10.0.0.2-6
	if _, got := create(1); !slices.Equal(got, []string{"10.0.0.7"}) {
		t.Fatalf("second batch: %v, want [10.0.0.7]", got)
	}
	w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: names[1]}}})
	w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: names[3]}}})
	if _, got := create(1); !slices.Equal(got, []string{"10.0.0.3"}) {
		t.Fatalf("after cancelling the jobs of 10.0.0.3 and .5: %v, want [10.0.0.3]", got)
	}
	h := w.adm.heldPrefix["l3Networks/net1"]
	if h.end.String() != "10.0.0.7" || len(h.gaps) != 2 {
		t.Fatalf("hint: end %v, gaps %v; want end 10.0.0.7 (.2-.6 held but the gaps), gaps .3 (this batch's) and .5", h.end, h.gaps)
	}
	if _, got := create(2); !slices.Equal(got, []string{"10.0.0.5", "10.0.0.8"}) {
		t.Fatalf("next batch: %v, want [10.0.0.5 10.0.0.8]", got)
	}
	if _, got := create(1); !slices.Equal(got, []string{"10.0.0.9"}) {
		t.Fatalf("next batch: %v, want [10.0.0.9]", got)
	}
	if h := w.adm.heldPrefix["l3Networks/net1"]; h.end.String() != "10.0.0.9" || len(h.gaps) != 0 {
		t.Errorf("hint: end %v, gaps %v; want end 10.0.0.9, no gaps (every address before it held)", h.end, h.gaps)
	}
}
