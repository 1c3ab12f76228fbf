package api

import (
	"context"
	"encoding/base64"
	"slices"
	"strings"
	"sync"
	"time"

	rpccode "google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ferry-v2v/ferry/coordinator/internal/authz"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// auditTimeout bounds recording one audit event; the call's own context
// may be cancelled by then (the event is recorded all the same).
const auditTimeout = 10 * time.Second

// maxAuditCreated bounds AuditEvent.created (a batch creates up to 50).
const maxAuditCreated = 100

// IsMutating says whether a ferry.v1 method changes the ledger, and so
// leaves an audit event: the write verbs, and SyncSource (it records the
// source's inventory).
func IsMutating(fullMethod string) bool {
	return fullMethod == "/ferry.v1.SourceService/SyncSource" ||
		IsWriteMethod(fullMethod) && !leaderOnly[fullMethod]
}

// AuditRetention is what the leader stamps into each RecordAuditEvent.
type AuditRetention struct {
	MaxAge    time.Duration
	MaxEvents int
}

// audit records the call that ended with resp and err in the audit trail,
// through Raft, as the companion entry of the call's own command. A
// failure to record is logged: the call's answer stands.
func (a *API) audit(ctx context.Context, method string, req, resp any, err error) {
	ev := &ferryv1.AuditEvent{
		Identity: "anonymous",
		Method:   method,
		Result:   rpccode.Code(status.Code(a.toStatus(ctx, err))).String(),
	}
	if c, ok := authz.CallerFrom(ctx); ok {
		ev.Identity = c.Identity.String()
	}
	if m, ok := req.(proto.Message); ok {
		ev.Fields = changedFields(m.ProtoReflect())
		ev.Resource = requestResource(m.ProtoReflect())
	}
	if m, ok := resp.(proto.Message); ok && err == nil && m.ProtoReflect().IsValid() {
		if ev.Resource == "" {
			ev.Resource = stringField(m.ProtoReflect(), "name")
		}
		ev.Created = createdNames(m.ProtoReflect(), ev.Resource)
		if ev.Resource == "" && len(ev.Created) > 0 {
			ev.Resource, ev.Created = ev.Created[0], ev.Created[1:]
		}
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_RecordAuditEvent{RecordAuditEvent: &ledgerv1.RecordAuditEvent{
		Event: ev, Retention: &ledgerv1.AuditRetention{
			MaxAgeSeconds: int64(a.auditRetention.MaxAge / time.Second), MaxEvents: int32(a.auditRetention.MaxEvents)}}}}
	if perr := a.auditBatch.record(a, cmd); perr != nil {
		a.log.Warn("audit event not recorded", "method", method, "identity", ev.Identity, "resource", ev.Resource, "result", ev.Result, "err", perr)
	}
}

// maxAuditBatch bounds how many audit events one Raft entry carries.
const maxAuditBatch = 256

// auditBatcher commits audit events in groups: the first caller to find
// none in flight proposes every event queued so far as one Batch entry;
// events queued meanwhile go in the next entry, proposed by a goroutine
// of their own. Each caller waits for the entry holding its event. So a
// write still answers after its audit event is in the ledger, but many
// concurrent writes share one extra Raft round trip instead of one each
// (BenchmarkLedgerWriteThroughput: api against api-without-audit).
type auditBatcher struct {
	mu       sync.Mutex
	pending  []auditRequest
	inFlight bool
}

type auditRequest struct {
	cmd  *ledgerv1.Command
	done chan error
}

func (b *auditBatcher) record(a *API, cmd *ledgerv1.Command) error {
	r := auditRequest{cmd: cmd, done: make(chan error, 1)}
	b.mu.Lock()
	b.pending = append(b.pending, r)
	drive := !b.inFlight
	b.inFlight = true
	b.mu.Unlock()
	if drive {
		b.commit(a)
	}
	return <-r.done
}

// commit proposes the queued events, a batch at a time, while there are
// any; the caller that started it returns after its own batch and a
// goroutine goes on with the rest.
func (b *auditBatcher) commit(a *API) {
	for first := true; ; first = false {
		b.mu.Lock()
		batch := b.pending[:min(len(b.pending), maxAuditBatch)]
		b.pending = b.pending[len(batch):]
		if len(batch) == 0 {
			b.inFlight = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		if !first {
			go func() { b.propose(a, batch); b.commit(a) }()
			return
		}
		b.propose(a, batch)
	}
}

func (b *auditBatcher) propose(a *API, batch []auditRequest) {
	cmd := batch[0].cmd
	if len(batch) > 1 {
		cmds := make([]*ledgerv1.Command, len(batch))
		for i, r := range batch {
			cmds[i] = r.cmd
		}
		cmd = &ledgerv1.Command{Op: &ledgerv1.Command_Batch{Batch: &ledgerv1.Batch{Commands: cmds}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), auditTimeout)
	_, err := a.propose(ctx, cmd)
	cancel()
	for _, r := range batch {
		r.done <- err
	}
}

// requestResource is the resource a request names: its name, or else the
// migration server of a batch, or else the name the resource it carries
// asks for (a Create with an ID), "" when none (the response's then).
func requestResource(m protoreflect.Message) string {
	for _, f := range []string{"name", "migration_server"} {
		if s := stringField(m, f); s != "" {
			return s
		}
	}
	res := ""
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && !wellKnown(fd) {
			res = stringField(v.Message(), "name")
		}
		return res == ""
	})
	return res
}

func stringField(m protoreflect.Message, name string) string {
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() || fd.IsMap() {
		return ""
	}
	return m.Get(fd).String()
}

// createdNames are the names of the resources a response carries (a
// message field's name, a list's names), but for skip.
func createdNames(m protoreflect.Message, skip string) []string {
	var out []string
	add := func(n string) {
		if n != "" && n != skip && len(out) < maxAuditCreated {
			out = append(out, n)
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			for i := 0; i < v.List().Len(); i++ {
				add(stringField(v.List().Get(i).Message(), "name"))
			}
			return true
		}
		add(stringField(v.Message(), "name"))
		return true
	})
	return out
}

// changedFields are the paths of the fields a request sets, two levels
// deep ("credential.secret"), and the paths of its update_mask: names
// only, never a value. request_id and etag are bookkeeping, not changes.
func changedFields(m protoreflect.Message) []string {
	var out []string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		switch {
		case name == "request_id":
		case name == "update_mask" && fd.Kind() == protoreflect.MessageKind:
			for _, p := range v.Message().Interface().(interface{ GetPaths() []string }).GetPaths() {
				out = append(out, "update_mask:"+p)
			}
		case fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && !wellKnown(fd):
			n := len(out)
			v.Message().Range(func(sub protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
				if sub.Name() != "etag" {
					out = append(out, name+"."+string(sub.Name()))
				}
				return true
			})
			if len(out) == n {
				out = append(out, name)
			}
		default:
			out = append(out, name)
		}
		return true
	})
	slices.Sort(out) // Range's order is not defined: events must not depend on it
	return out
}

func wellKnown(fd protoreflect.FieldDescriptor) bool {
	return strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.")
}

// auditService is ferry.v1.AuditService.
type auditService struct {
	ferryv1.UnimplementedAuditServiceServer
	a *API
}

func (s *auditService) ListAuditEvents(ctx context.Context, req *ferryv1.ListAuditEventsRequest) (*ferryv1.ListAuditEventsResponse, error) {
	resp, err := s.list(req)
	return reply(ctx, s.a, resp, err)
}

func (s *auditService) list(req *ferryv1.ListAuditEventsRequest) (*ferryv1.ListAuditEventsResponse, error) {
	c := &checker{}
	f := ledger.AuditFilter{Resource: req.GetResource(), Identity: req.GetIdentity()}
	if req.GetResource() != "" {
		checkText(c, "resource", req.GetResource(), maxDisplayName)
	}
	if req.GetIdentity() != "" {
		checkText(c, "identity", req.GetIdentity(), maxDisplayName)
	}
	if req.GetStartTime() != nil {
		f.Start = req.GetStartTime().AsTime()
	}
	if req.GetEndTime() != nil {
		f.End = req.GetEndTime().AsTime()
		if !f.Start.IsZero() && !f.End.After(f.Start) {
			c.add("end_time", "must be after start_time")
		}
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		c.add("page_size", "must not be negative, got %d", size)
	case size == 0:
		size = defaultPageSize
	}
	size = min(size, maxPageSize)
	if tok := req.GetPageToken(); tok != "" {
		last, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || !strings.HasPrefix(string(last), "auditEvents/") {
			c.add("page_token", "not a token this API returned; start again without one")
		}
		f.Before = string(last)
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	events, more := s.a.ledger.AuditEvents(f, size)
	resp := &ferryv1.ListAuditEventsResponse{AuditEvents: events}
	if more && len(events) > 0 {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(events[len(events)-1].GetName()))
	}
	return resp, nil
}
