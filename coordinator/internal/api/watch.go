package api

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// defaultWatchBuffer is how many state changes a watcher may fall behind
// before the hub drops it and the stream ends, asking the caller to watch
// again.
const defaultWatchBuffer = 1024

// WatchMigrationJobs streams job changes and live progress. It subscribes
// before it reads the initial state, so no change falls between the two;
// a change may then arrive twice, which a watcher keyed by name absorbs.
func (s *jobService) WatchMigrationJobs(req *ferryv1.WatchMigrationJobsRequest, stream ferryv1.MigrationJobService_WatchMigrationJobsServer) error {
	ctx := stream.Context()
	match, err := watchFilter(req)
	if err != nil {
		return s.a.toStatus(ctx, err)
	}
	events, stop := s.a.hub.Subscribe(s.a.watchBuffer)
	defer stop()
	if req.GetSendInitial() {
		for _, j := range s.a.ledger.Jobs(ledger.JobFilter{MigrationServer: req.GetMigrationServer()}) {
			if !match(j) {
				continue
			}
			resp := &ferryv1.WatchMigrationJobsResponse{Type: ferryv1.WatchEventType_WATCH_EVENT_TYPE_INITIAL, Job: s.a.hub.Overlay(j)}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return s.a.toStatus(ctx, ctx.Err())
		case ev, ok := <-events:
			if !ok {
				return status.Error(codes.Unavailable, "watcher fell behind; watch again")
			}
			if !match(ev.Job) {
				continue
			}
			if err := stream.Send(&ferryv1.WatchMigrationJobsResponse{Type: ev.Type, Job: ev.Job}); err != nil {
				return err
			}
		}
	}
}

// watchFilter checks the request and returns which jobs it selects.
func watchFilter(req *ferryv1.WatchMigrationJobsRequest) (func(*ferryv1.MigrationJob) bool, error) {
	c := &checker{}
	names := map[string]bool{}
	for i, n := range req.GetNames() {
		checkRef(c, "names["+itoa(i)+"]", n, colJobs)
		names[n] = true
	}
	checkOptionalRef(c, "migration_server", req.GetMigrationServer(), colServers)
	if err := c.err(); err != nil {
		return nil, err
	}
	server := req.GetMigrationServer()
	return func(j *ferryv1.MigrationJob) bool {
		return (len(names) == 0 || names[j.GetName()]) && (server == "" || j.GetMigrationServer() == server)
	}, nil
}
