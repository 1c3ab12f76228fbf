package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferry-v2v/ferry/pkg/backoff"
	"github.com/ferry-v2v/ferry/pkg/client"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	"github.com/ferry-v2v/ferry/pkg/hostname"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) jobWatch() *cobra.Command {
	var untilDone bool
	var server string
	cmd := &cobra.Command{
		Use:   "watch [NAME...]",
		Short: "Follow jobs live: a progress bar per job and disk, with rate and ETA",
		Long: `Follow jobs as they run: state changes and live progress, a bar per job and
disk with percentage, rate and ETA.

On a terminal the display redraws in place; otherwise (a pipe, a file, CI)
each update is one line. With -o json each event is one line of JSON, the
API's WatchMigrationJobsResponse. -o yaml is not streamed; use json.

With names, watch those jobs and exit when all have ended (--until-done is
on). Without names, watch every job (or only those of --migration-server)
until interrupted; with --until-done, watch the jobs unfinished at the start
until they end. When it exits because the jobs ended, the exit status is 1 if
any of them failed or was cancelled, else 0.

The watch follows the leader: when the node streaming it goes away, ferryctl
watches again elsewhere, starting from the jobs' current state.`,
		Example: `  ferryctl job watch                              # everything, until Ctrl-C
  ferryctl job watch migrationJobs/4f2c 9a1b      # until both end
  ferryctl job watch --until-done                 # until what runs now ends
  ferryctl job watch -o json | jq -c '.job | {name, state}'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			w := &watcher{a: a, untilDone: len(args) > 0, server: resName("migrationServers", server), jobs: map[string]*ferryv1.MigrationJob{}}
			if cmd.Flags().Changed("until-done") {
				w.untilDone = untilDone
			}
			for _, n := range args {
				w.names = append(w.names, resName("migrationJobs", n))
			}
			if a.output == "yaml" {
				return usagef("job watch streams table or json output, not yaml")
			}
			return a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
				w.cl = cl
				return w.run(ctx)
			})(cmd, args)
		},
	}
	cmd.Flags().BoolVar(&untilDone, "until-done", false, "exit when every watched job has ended (default: on when names are given)")
	cmd.Flags().StringVar(&server, "migration-server", "", "only jobs of this migration server")
	return cmd
}

// watcher follows jobs and draws them.
type watcher struct {
	a         *app
	cl        *client.Client
	names     []string // the jobs watched; all when empty
	server    string
	untilDone bool

	order  []string // job names in the order first seen
	jobs   map[string]*ferryv1.MigrationJob
	gone   map[string]bool // deleted while watched
	screen *screen
}

// watchRetry is the pause before watching again after the stream broke.
const watchRetry = 500 * time.Millisecond

func (w *watcher) run(ctx context.Context) error {
	if err := w.prepare(ctx); err != nil {
		return err
	}
	if w.a.io.Terminal && w.a.output == "table" {
		w.screen = &screen{w: w.a.io.Out}
		w.redraw()
	}
	if w.untilDone && len(w.names) == 0 {
		return nil // nothing unfinished to wait for
	}
	for !(w.untilDone && w.finished()) {
		err := w.stream(ctx)
		switch {
		case err == nil:
			continue
		case ctx.Err() != nil:
			return nil // interrupted: not a failure
		case errors.Is(err, io.EOF) || status.Code(err) == codes.Unavailable:
			if err := sleepCtx(ctx, watchRetry); err != nil {
				return nil
			}
		default:
			return err
		}
	}
	return w.result()
}

// prepare checks the named jobs exist, or with --until-done and no names
// picks the jobs unfinished now. Its reads are linearizable, so a job just
// changed through another node is seen as it is; what it shows is only a
// start, the stream's initial events decide when a job has ended.
func (w *watcher) prepare(ctx context.Context) error {
	ctx = grpcutil.WithLinearizableRead(ctx)
	for _, n := range w.names {
		if _, err := w.cl.Jobs().GetMigrationJob(ctx, &ferryv1.GetMigrationJobRequest{Name: n}); err != nil {
			return err
		}
	}
	if len(w.names) > 0 || !w.untilDone {
		return nil
	}
	var token string
	for {
		resp, err := w.cl.Jobs().ListMigrationJobs(ctx, &ferryv1.ListMigrationJobsRequest{PageToken: token, MigrationServer: w.server})
		if err != nil {
			return err
		}
		for _, j := range resp.GetJobs() {
			if !terminal(j) {
				w.names = append(w.names, j.GetName())
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(w.names) == 0 && w.a.output == "table" {
		fmt.Fprintln(w.a.io.Out, "no unfinished jobs")
	}
	return nil
}

// stream watches once, from the jobs' current state, until the stream
// ends or (with --until-done) every watched job has ended.
func (w *watcher) stream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := w.cl.Jobs().WatchMigrationJobs(ctx, &ferryv1.WatchMigrationJobsRequest{Names: w.names, MigrationServer: w.server, SendInitial: true})
	if err != nil {
		return err
	}
	for {
		ev, err := s.Recv()
		if err != nil {
			return err
		}
		if err := w.apply(ev); err != nil {
			return err
		}
		if w.untilDone && w.finished() {
			return nil
		}
	}
}

// apply records an event and shows it.
func (w *watcher) apply(ev *ferryv1.WatchMigrationJobsResponse) error {
	j := ev.GetJob()
	if ev.GetType() == ferryv1.WatchEventType_WATCH_EVENT_TYPE_DELETED {
		if w.gone == nil {
			w.gone = map[string]bool{}
		}
		w.gone[j.GetName()] = true
	}
	w.keep(j)
	switch {
	case w.a.output == "json":
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w.a.io.Out, "%s\n", b)
		return err
	case w.screen != nil:
		w.redraw()
	default:
		fmt.Fprintln(w.a.io.Out, hostname.Escape(progressLine(ev, now())))
	}
	return nil
}

func (w *watcher) keep(j *ferryv1.MigrationJob) {
	if _, ok := w.jobs[j.GetName()]; !ok {
		w.order = append(w.order, j.GetName())
	}
	w.jobs[j.GetName()] = j
}

func (w *watcher) redraw() {
	var lines []string
	for _, n := range w.order {
		if w.gone[n] {
			lines = append(lines, n+"  deleted")
			continue
		}
		lines = append(lines, progressLines(w.jobs[n])...)
	}
	for i, l := range lines {
		lines[i] = hostname.Escape(l) // the screen's own escapes are added by draw
	}
	w.screen.draw(lines)
}

// finished reports whether every watched job has ended or gone.
func (w *watcher) finished() bool {
	for _, n := range w.names {
		if j, ok := w.jobs[n]; !w.gone[n] && (!ok || !terminal(j)) {
			return false
		}
	}
	return true
}

// result is the exit of a watch that ran until its jobs ended.
func (w *watcher) result() error {
	failed := 0
	for _, n := range w.names {
		if j := w.jobs[n]; !w.gone[n] && j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d jobs did not succeed", failed, len(w.names))
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if backoff.Sleep(ctx, d) {
		return nil
	}
	return ctx.Err()
}
