package session

import (
	"sync"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// Outbox holds what the runner reports until a session sends it: the
// latest progress of each job (older progress is replaced, never queued)
// and every result, in order. It is the runner's Reporter and never blocks.
type Outbox struct {
	mu       sync.Mutex
	progress map[string]*agentv1.JobProgress
	results  []*agentv1.JobResult
	other    []*agentv1.ConnectRequest // inventory answers, host keys
	wake     chan struct{}
}

// NewOutbox returns an empty outbox.
func NewOutbox() *Outbox {
	return &Outbox{progress: map[string]*agentv1.JobProgress{}, wake: make(chan struct{}, 1)}
}

// Progress replaces the pending progress of p's job.
func (o *Outbox) Progress(p *agentv1.JobProgress) {
	o.mu.Lock()
	o.progress[p.GetJob()] = p
	o.mu.Unlock()
	o.notify()
}

// Result queues a result. The job's pending progress stays: it is sent
// first, so the coordinator still records the last phase entered.
func (o *Outbox) Result(r *agentv1.JobResult) {
	o.mu.Lock()
	o.results = append(o.results, r)
	o.mu.Unlock()
	o.notify()
}

// HostKey reports the SSH host key a KVM source presented when it had
// none pinned or recorded; source drivers call it.
func (o *Outbox) HostKey(source, key string) {
	o.queue(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_HostKeyObserved{HostKeyObserved: &agentv1.HostKeyObserved{
		Source: source, HostKey: key}}})
}

// queue adds a message to send after the progress.
func (o *Outbox) queue(m *agentv1.ConnectRequest) {
	o.mu.Lock()
	o.other = append(o.other, m)
	o.mu.Unlock()
	o.notify()
}

func (o *Outbox) notify() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// take empties the outbox: progress first, then results in order.
func (o *Outbox) take() []*agentv1.ConnectRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]*agentv1.ConnectRequest, 0, len(o.progress)+len(o.other)+len(o.results))
	for _, p := range o.progress {
		out = append(out, &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: p}})
	}
	out = append(out, o.other...)
	for _, r := range o.results {
		out = append(out, &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: r}})
	}
	o.progress = map[string]*agentv1.JobProgress{}
	o.other, o.results = nil, nil
	return out
}

// putBack returns unsent results and host keys to the front of the queue.
// Unsent progress is dropped (fresher progress follows), and so are
// inventory answers (the call that asked is gone with the session).
func (o *Outbox) putBack(unsent []*agentv1.ConnectRequest) {
	var rs []*agentv1.JobResult
	var keys []*agentv1.ConnectRequest
	for _, m := range unsent {
		if r := m.GetResult(); r != nil {
			rs = append(rs, r)
		}
		if m.GetHostKeyObserved() != nil {
			keys = append(keys, m)
		}
	}
	if len(rs)+len(keys) == 0 {
		return
	}
	o.mu.Lock()
	o.results = append(rs, o.results...)
	o.other = append(keys, o.other...)
	o.mu.Unlock()
	o.notify()
}

// held lists the jobs whose results are not sent yet: the agent still
// holds them, so the coordinator neither assigns them again nor gives up.
func (o *Outbox) held() []*agentv1.HeldJob {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]*agentv1.HeldJob, 0, len(o.results))
	for _, r := range o.results {
		out = append(out, &agentv1.HeldJob{Job: r.GetJob(), Epoch: r.GetEpoch()})
	}
	return out
}
