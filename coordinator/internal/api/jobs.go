package api

import (
	"context"
	"time"

	metrics "github.com/hashicorp/go-metrics/compat"

	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const maxReason = 1024

// jobService is ferry.v1.MigrationJobService. Jobs are read through the
// watch hub's overlay, so the leader shows live progress.
type jobService struct {
	ferryv1.UnimplementedMigrationJobServiceServer
	a *API
}

func (s *jobService) CreateMigrationJobs(ctx context.Context, req *ferryv1.CreateMigrationJobsRequest) (*ferryv1.CreateMigrationJobsResponse, error) {
	jobs, err := s.create(ctx, req)
	return reply(ctx, s.a, &ferryv1.CreateMigrationJobsResponse{Jobs: jobs}, err)
}

// create admits, proposes and reads back a batch. Each step's time goes
// to go-metrics as ferry.create_migration_jobs.{admission,propose,read},
// beside Raft's own timings; nothing collects them unless a sink is
// installed (the benchmarks' FERRY_BENCH_STAGES does).
func (s *jobService) create(ctx context.Context, req *ferryv1.CreateMigrationJobsRequest) ([]*ferryv1.MigrationJob, error) {
	if names, ok, err := s.a.firstRequest(req.GetRequestId(), colJobs); err != nil || ok {
		return s.readJobs(names, err)
	}
	start := time.Now()
	admitted, err := s.a.admission.Create(ctx, req)
	if err != nil {
		return nil, err
	}
	defer admitted.Release()
	start = stage("admission", start)
	names, err := s.a.propose(ctx, admitted.Command)
	if err == nil {
		err = checkCollection(names, colJobs, req.GetRequestId())
	}
	start = stage("propose", start)
	defer stage("read", start)
	return s.readJobs(names, err)
}

// stage records the time since start of a step of CreateMigrationJobs
// and returns now, the next step's start.
func stage(name string, start time.Time) time.Time {
	now := time.Now()
	metrics.AddSample([]string{"ferry", "create_migration_jobs", name}, float32(now.Sub(start))/float32(time.Millisecond))
	return now
}

// readJobs reads jobs back from the ledger, with live progress.
func (s *jobService) readJobs(names []string, err error) ([]*ferryv1.MigrationJob, error) {
	if err != nil {
		return nil, err
	}
	out := make([]*ferryv1.MigrationJob, 0, len(names))
	for _, n := range names {
		j, err := s.readJob(n, nil)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

func (s *jobService) readJob(name string, err error) (*ferryv1.MigrationJob, error) {
	if err != nil {
		return nil, err
	}
	j, err := lookup(s.a.ledger.Job, name, "migration job")
	if err != nil {
		return nil, err
	}
	return s.a.hub.Overlay(j), nil
}

func (s *jobService) GetMigrationJob(ctx context.Context, req *ferryv1.GetMigrationJobRequest) (*ferryv1.MigrationJob, error) {
	j, err := s.readJob(req.GetName(), checkName(req.GetName(), colJobs))
	return reply(ctx, s.a, j, err)
}

func (s *jobService) ListMigrationJobs(ctx context.Context, req *ferryv1.ListMigrationJobsRequest) (*ferryv1.ListMigrationJobsResponse, error) {
	c := &checker{}
	checkEnum(c, "state", req.GetState(), false)
	checkOptionalRef(c, "migration_server", req.GetMigrationServer(), colServers)
	checkOptionalRef(c, "source", req.GetSource(), colSources)
	if err := c.err(); err != nil {
		return reply[*ferryv1.ListMigrationJobsResponse](ctx, s.a, nil, err)
	}
	all := s.a.ledger.Jobs(ledger.JobFilter{State: req.GetState(), MigrationServer: req.GetMigrationServer(), Source: req.GetSource()})
	page, next, err := paginate(all, req.GetPageSize(), req.GetPageToken())
	for _, j := range page {
		s.a.hub.Overlay(j)
	}
	return reply(ctx, s.a, &ferryv1.ListMigrationJobsResponse{Jobs: page, NextPageToken: next}, err)
}

// CancelMigrationJob records the cancellation; the session manager sees
// the job event and tells the agent to stop.
func (s *jobService) CancelMigrationJob(ctx context.Context, req *ferryv1.CancelMigrationJobRequest) (*ferryv1.CancelMigrationJobResponse, error) {
	const method = "CancelMigrationJob"
	c := &checker{}
	checkRef(c, "name", req.GetName(), colJobs)
	checkText(c, "reason", req.GetReason(), maxReason)
	checkRequestID(c, req.GetRequestId())
	err := c.err()
	var again bool
	if err == nil {
		again, err = s.a.replayed(req.GetRequestId(), method, req.GetName())
	}
	if err == nil && !again {
		_, err = s.a.propose(ctx, withRequest(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{
			Name: req.GetName(), Reason: req.GetReason(),
		}}}, req.GetRequestId(), method, req.GetName()))
	}
	j, err := s.readJob(req.GetName(), err)
	return reply(ctx, s.a, &ferryv1.CancelMigrationJobResponse{Job: j}, err)
}

func (s *jobService) RestartMigrationJob(ctx context.Context, req *ferryv1.RestartMigrationJobRequest) (*ferryv1.RestartMigrationJobResponse, error) {
	const method = "RestartMigrationJob"
	c := &checker{}
	checkRef(c, "name", req.GetName(), colJobs)
	checkRequestID(c, req.GetRequestId())
	checkEnum(c, "guest_conversion", req.GetGuestConversion(), false)
	err := c.err()
	var again bool
	if err == nil {
		again, err = s.a.replayed(req.GetRequestId(), method, req.GetName())
	}
	if err == nil && !again {
		err = s.restart(ctx, req.GetName(), req.GetRequestId(), req.GetGuestConversion())
	}
	j, err := s.readJob(req.GetName(), err)
	return reply(ctx, s.a, &ferryv1.RestartMigrationJobResponse{Job: j}, err)
}

// restart has admission place the job again (unless its spec names
// target.host) and proposes the restart with the host stamped in, so every
// replica records the leader's choice.
func (s *jobService) restart(ctx context.Context, name, requestID string, conversion ferryv1.GuestConversion) error {
	r, err := s.a.admission.Restart(name)
	if err != nil {
		return err
	}
	defer r.Release()
	r.Command.GuestConversion = conversion
	_, err = s.a.propose(ctx, withRequest(&ledgerv1.Command{Op: &ledgerv1.Command_RestartMigrationJob{RestartMigrationJob: r.Command}},
		requestID, "RestartMigrationJob", name))
	return err
}

func (s *jobService) DeleteMigrationJob(ctx context.Context, req *ferryv1.DeleteMigrationJobRequest) (*emptypb.Empty, error) {
	err := s.a.deleteResource(ctx, req.GetName(), colJobs, func(d *ledgerv1.DeleteResource) *ledgerv1.Command {
		return &ledgerv1.Command{Op: &ledgerv1.Command_DeleteMigrationJob{DeleteMigrationJob: d}}
	})
	return reply(ctx, s.a, &emptypb.Empty{}, err)
}

// CutoverMigrationJob sets when a warm job cuts over: cutover_time, or the
// leader's now when it is unset or past. The session manager sees the job
// change and tells the agent running it.
func (s *jobService) CutoverMigrationJob(ctx context.Context, req *ferryv1.CutoverMigrationJobRequest) (*ferryv1.CutoverMigrationJobResponse, error) {
	const method = "CutoverMigrationJob"
	c := &checker{}
	checkRef(c, "name", req.GetName(), colJobs)
	at := req.GetCutoverTime()
	if at != nil && at.CheckValid() != nil {
		c.add("cutover_time", "not a valid time: %v", at.CheckValid())
	}
	checkRequestID(c, req.GetRequestId())
	err := c.err()
	var again bool
	if err == nil {
		again, err = s.a.replayed(req.GetRequestId(), method, req.GetName())
	}
	if err == nil && !again {
		if at == nil || at.AsTime().Before(s.a.clock()) {
			at = timestamppb.New(s.a.clock())
		}
		_, err = s.a.propose(ctx, withRequest(&ledgerv1.Command{Op: &ledgerv1.Command_SetMigrationJobCutover{
			SetMigrationJobCutover: &ledgerv1.SetMigrationJobCutover{Name: req.GetName(), CutoverTime: at}}},
			req.GetRequestId(), method, req.GetName()))
	}
	j, err := s.readJob(req.GetName(), err)
	return reply(ctx, s.a, &ferryv1.CutoverMigrationJobResponse{Job: j}, err)
}
