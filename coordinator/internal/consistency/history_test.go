package consistency

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/pkg/client"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// The register is settings.cache_retention, in whole seconds; every
// write stores a value no other write stores.

// Kinds of operations in the history.
const (
	opWrite  = "write"        // UpdateSettings
	opLinear = "linearizable" // GetSettings, ferry-read: linearizable
	opRYW    = "read-your-writes"
	opLocal  = "local" // GetSettings with no ferry-min-index
)

// op is one call of the history. Times are since the workload began.
type op struct {
	client    int
	kind      string
	value     int64 // written, or read
	ok        bool
	call, ret time.Duration
	index     uint64 // ferry-applied-index of the answer
	node      string // ferry-node of the answer
	// err is why the call failed.
	err string
	// lastAck is, for a read-your-writes read, its client's last
	// acknowledged write when the read began.
	lastAck *op
}

type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []*op
	next  atomic.Int64 // the last value written
}

func (h *history) now() time.Duration { return time.Since(h.start) }

func (h *history) add(o *op) {
	h.mu.Lock()
	h.ops = append(h.ops, o)
	h.mu.Unlock()
}

// write stores a new value through cl and records the call.
func (h *history) write(ctx context.Context, id int, cl *client.Client) *op {
	v := h.next.Add(1)
	o := &op{client: id, kind: opWrite, value: v, call: h.now()}
	var md metadata.MD
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := cl.Settings().UpdateSettings(cctx, &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{CacheRetention: durationpb.New(time.Duration(v) * time.Second)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"cache_retention"}}}, grpc.Header(&md))
	cancel()
	o.ret, o.ok = h.now(), err == nil
	o.index, o.node = answerOf(md)
	o.err = errText(err)
	h.add(o)
	return o
}

// errText is an error's code and the start of its message, to count
// failures by kind.
func errText(err error) string {
	if err == nil {
		return ""
	}
	st := status.Convert(err)
	msg := st.Message()
	if i := strings.IndexAny(msg, "0123456789"); i > 0 {
		msg = msg[:i]
	}
	return st.Code().String() + ": " + msg
}

// notTaken says whether a failed write certainly had no effect: it never
// left the client (no connection), or a follower refused it knowing no
// leader to forward it to.
func notTaken(errText string) bool {
	return strings.Contains(errText, "Error while dialing") || strings.HasSuffix(errText, ": no leader elected yet")
}

// read reads the register through cl and records the call.
func (h *history) read(ctx context.Context, id int, kind string, cl *client.Client, lastAck *op) *op {
	o := &op{client: id, kind: kind, call: h.now(), lastAck: lastAck}
	var md metadata.MD
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	s, err := cl.Settings().GetSettings(cctx, &ferryv1.GetSettingsRequest{}, grpc.Header(&md))
	cancel()
	o.ret, o.ok = h.now(), err == nil
	o.value = int64(s.GetCacheRetention().AsDuration() / time.Second)
	o.index, o.node = answerOf(md)
	o.err = errText(err)
	h.add(o)
	return o
}

func answerOf(md metadata.MD) (uint64, string) {
	idx, _ := grpcutil.AppliedIndex(md)
	node := ""
	if v := md.Get(grpcutil.NodeHeader); len(v) > 0 {
		node = v[0]
	}
	return idx, node
}

// TestHistoryUnderFaults runs writers, linearizable readers,
// read-your-writes clients (each writes, then reads from the nodes in
// turn) and plain local readers against three coordinator processes
// while the leader is killed and restarted twice, the leader and a
// follower are paused (SIGSTOP) for seconds, and a follower is killed and
// restarted. Then it checks the history:
//   - writes and linearizable reads are linearizable (porcupine);
//   - acknowledged writes' indexes follow real time;
//   - a read-your-writes read reflects its client's last acknowledged
//     write (index and value);
//   - no local read answered by a node is older (index or value) than
//     one the same node answered before it began, across its restarts.
func TestHistoryUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("three coordinator processes under faults")
	}
	c := startCluster(t)
	linClient := func() *client.Client {
		return c.newClient(client.Options{LinearizableReads: true, AttemptTimeout: 2 * time.Second})
	}
	init := c.admin
	s, err := init.Settings().GetSettings(ctxFor(t, 10*time.Second), &ferryv1.GetSettingsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	initial := int64(s.GetCacheRetention().AsDuration() / time.Second)
	h := &history{start: time.Now()}
	h.next.Store(1_000_000)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	worker := func(fn func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				fn()
				time.Sleep(15 * time.Millisecond)
			}
		}()
	}
	id := 0
	// Writers and read-your-writes clients never retry a write: a write
	// applied twice would look like two writes to the checker.
	for i := 0; i < 2; i++ {
		cl, me := c.newClient(client.Options{MaxAttempts: 1}), id
		worker(func() { h.write(ctx, me, cl) })
		id++
	}
	for i := 0; i < 2; i++ {
		cl, me := linClient(), id
		worker(func() { h.read(ctx, me, opLinear, cl, nil) })
		id++
	}
	for i := 0; i < 3; i++ {
		cl, me := c.newClient(client.Options{MaxAttempts: 1, SpreadReads: true}), id
		var last *op
		worker(func() {
			if w := h.write(ctx, me, cl); w.ok {
				last = w
			}
			for j := 0; j < 3 && ctx.Err() == nil; j++ {
				h.read(ctx, me, opRYW, cl, last)
			}
		})
		id++
	}
	for i := 0; i < 2; i++ {
		cl, me := c.newClient(client.Options{SpreadReads: true, StaleReadsOK: true, AttemptTimeout: 2 * time.Second}), id
		worker(func() { h.read(ctx, me, opLocal, cl, nil) })
		id++
	}

	restarted := c.faults(t, h)
	stop()
	wg.Wait()
	for _, n := range c.nodes {
		c.resume(n) // none should still be paused; harmless if not
	}
	checkHistory(t, h, initial, restarted)
	for _, n := range c.nodes {
		for _, l := range strings.Split(tail(n.logPath, 1<<20), "\n") {
			if strings.Contains(l, "local reads wait") || strings.Contains(l, "local reads open") {
				t.Logf("%s: %s", n.id, l)
			}
		}
	}
}

// faults runs the schedule of faults while the workload runs, and
// returns the ids of the nodes it restarted.
func (c *cluster) faults(t *testing.T, h *history) map[string]bool {
	restarted := map[string]bool{}
	step := func(d time.Duration, what string, fn func()) {
		time.Sleep(d)
		fn()
		t.Logf("%6.2fs %s", h.now().Seconds(), what)
	}
	for round := 0; round < 2; round++ {
		l := c.leader(30*time.Second, nil)
		step(3*time.Second, "SIGKILL leader "+l.id, func() { c.kill(l) })
		step(2500*time.Millisecond, "restart "+l.id, func() { c.start(l); restarted[l.id] = true })
		l = c.leader(30*time.Second, nil)
		step(3*time.Second, "SIGSTOP leader "+l.id, func() { c.pause(l) })
		step(4*time.Second, "SIGCONT "+l.id, func() { c.resume(l) })
	}
	l := c.leader(30*time.Second, nil)
	f := c.other(l)
	step(2*time.Second, "SIGSTOP follower "+f.id, func() { c.pause(f) })
	step(3*time.Second, "SIGCONT "+f.id, func() { c.resume(f) })
	f = c.other(c.leader(30*time.Second, nil), f)
	step(2*time.Second, "SIGKILL follower "+f.id, func() { c.kill(f) })
	step(2*time.Second, "restart "+f.id, func() { c.start(f); restarted[f.id] = true })
	step(4*time.Second, "end of the workload", func() {})
	return restarted
}

// checkHistory asserts the four properties and logs what it saw.
func checkHistory(t *testing.T, h *history, initial int64, restarted map[string]bool) {
	h.mu.Lock()
	ops := append([]*op(nil), h.ops...)
	h.mu.Unlock()
	count := map[string][2]int{} // kind → ok, failed
	writeIndex := map[int64]uint64{initial: 0}
	unknown := map[int64]bool{}
	for _, o := range ops {
		n := count[o.kind]
		if o.ok {
			n[0]++
		} else {
			n[1]++
		}
		count[o.kind] = n
		if o.kind == opWrite {
			switch {
			case o.ok:
				writeIndex[o.value] = o.index
			case notTaken(o.err):
			default:
				unknown[o.value] = true
			}
		}
	}
	for _, k := range []string{opWrite, opLinear, opRYW, opLocal} {
		t.Logf("%-16s %5d ok, %4d failed or unknown", k, count[k][0], count[k][1])
	}
	errs := map[string]int{}
	for _, o := range ops {
		if !o.ok {
			errs[o.kind+" "+o.err]++
		}
	}
	for e, n := range errs {
		t.Logf("%5d× %s", n, e)
	}
	t.Logf("writes whose outcome is unknown: %d (the rest of the failed ones never reached a leader)", len(unknown))
	if count[opWrite][0] < 100 || count[opLinear][0] < 100 || count[opRYW][0] < 100 || count[opLocal][0] < 100 {
		t.Errorf("too few operations succeeded to say much: %v", count)
	}
	checkLinearizable(t, ops, initial)
	checkWriteOrder(t, ops)
	checkReadYourWrites(t, ops, writeIndex, unknown)
	checkMonotonic(t, ops, writeIndex, restarted)
}

// register is the model of one register written with unique values.
type regInput struct {
	write bool
	value int64
}

func checkLinearizable(t *testing.T, ops []*op, initial int64) {
	var end time.Duration
	for _, o := range ops {
		end = max(end, o.ret)
	}
	var hist []porcupine.Operation
	for _, o := range ops {
		switch {
		case o.kind == opWrite && !o.ok && notTaken(o.err):
			// Never reached a leader: no effect, left out.
		case o.kind == opWrite:
			ret := int64(o.ret)
			if !o.ok { // may have taken effect at any time after its call
				ret = int64(end) + int64(time.Hour)
			}
			hist = append(hist, porcupine.Operation{ClientId: o.client, Input: regInput{write: true, value: o.value},
				Call: int64(o.call), Return: ret})
		case o.kind == opLinear && o.ok:
			hist = append(hist, porcupine.Operation{ClientId: o.client, Input: regInput{}, Output: o.value,
				Call: int64(o.call), Return: int64(o.ret)})
		}
	}
	model := porcupine.Model{
		Init: func() any { return initial },
		Step: func(state, input, output any) (bool, any) {
			in := input.(regInput)
			if in.write {
				return true, in.value
			}
			return output.(int64) == state.(int64), state
		},
		DescribeOperation: func(input, output any) string {
			if in := input.(regInput); in.write {
				return fmt.Sprintf("write %d", in.value)
			}
			return fmt.Sprintf("read %v", output)
		},
	}
	started := time.Now()
	res, info := porcupine.CheckOperationsVerbose(model, hist, 90*time.Second)
	t.Logf("porcupine: %s over %d operations in %v", res, len(hist), time.Since(started).Round(time.Millisecond))
	if res != porcupine.Ok {
		path := filepath.Join(os.TempDir(), "ferry-history-"+strconv.FormatInt(time.Now().UnixNano(), 10)+".html")
		if err := porcupine.VisualizePath(model, info, path); err == nil {
			t.Logf("visualization: %s", path)
		}
		t.Errorf("writes and linearizable reads: porcupine says %s, want Ok", res)
	}
}

// checkWriteOrder: a write acknowledged before another began has a lower
// log index.
func checkWriteOrder(t *testing.T, ops []*op) {
	var writes []*op
	for _, o := range ops {
		if o.kind == opWrite && o.ok {
			writes = append(writes, o)
		}
	}
	sort.Slice(writes, func(i, j int) bool { return writes[i].call < writes[j].call })
	byRet := append([]*op(nil), writes...)
	sort.Slice(byRet, func(i, j int) bool { return byRet[i].ret < byRet[j].ret })
	var maxBefore uint64
	k := 0
	for _, w := range writes {
		for k < len(byRet) && byRet[k].ret < w.call {
			maxBefore = max(maxBefore, byRet[k].index)
			k++
		}
		if w.index == 0 || w.index <= maxBefore {
			t.Errorf("write %d at index %d began after a write at index %d was acknowledged", w.value, w.index, maxBefore)
		}
	}
}

// checkReadYourWrites: a read-your-writes read reflects at least its
// client's last acknowledged write.
func checkReadYourWrites(t *testing.T, ops []*op, writeIndex map[int64]uint64, unknown map[int64]bool) {
	checked, fromUnknown, violations, byNode := 0, 0, 0, map[string]int{}
	report := func(format string, args ...any) {
		violations++
		if violations <= 10 {
			t.Errorf(format, args...)
		}
	}
	for _, o := range ops {
		if o.kind != opRYW || !o.ok || o.lastAck == nil {
			continue
		}
		checked++
		byNode[o.node]++
		want := o.lastAck.index
		if o.index < want {
			report("client %d read at %v from %s reflects index %d, older than its write %d at index %d", o.client, o.call, o.node, o.index, o.lastAck.value, want)
		}
		wi, known := writeIndex[o.value]
		switch {
		case known && wi < want:
			report("client %d read %d (written at index %d) from %s at %v, older than its own write %d at index %d",
				o.client, o.value, wi, o.node, o.call, o.lastAck.value, want)
		case !known && unknown[o.value]:
			fromUnknown++ // a write whose answer was lost: its index is unknown
		case !known:
			report("client %d read %d from %s, a value nobody wrote", o.client, o.value, o.node)
		}
	}
	if violations > 10 {
		t.Errorf("... %d read-your-writes violations in all", violations)
	}
	t.Logf("read-your-writes: %d reads checked (by answering node %v), %d of them of writes whose answer was lost", checked, byNode, fromUnknown)
	if checked == 0 {
		t.Error("no read-your-writes read to check")
	}
}

// checkMonotonic: no local read a node answered is older than one the
// same node answered before the read began.
func checkMonotonic(t *testing.T, ops []*op, writeIndex map[int64]uint64, restarted map[string]bool) {
	byNode := map[string][]*op{}
	for _, o := range ops {
		if (o.kind == opLocal || o.kind == opRYW) && o.ok {
			byNode[o.node] = append(byNode[o.node], o)
		}
	}
	for node, reads := range byNode {
		byCall := append([]*op(nil), reads...)
		sort.Slice(byCall, func(i, j int) bool { return byCall[i].call < byCall[j].call })
		byRet := append([]*op(nil), reads...)
		sort.Slice(byRet, func(i, j int) bool { return byRet[i].ret < byRet[j].ret })
		var maxIdx, maxVal uint64
		var maxValOp *op
		k, violations := 0, 0
		for _, r := range byCall {
			for k < len(byRet) && byRet[k].ret < r.call {
				p := byRet[k]
				maxIdx = max(maxIdx, p.index)
				if wi, ok := writeIndex[p.value]; ok && wi >= maxVal {
					maxVal, maxValOp = wi, p
				}
				k++
			}
			wi, known := writeIndex[r.value]
			if r.index < maxIdx || (known && wi < maxVal) {
				violations++
				if violations <= 5 {
					t.Errorf("node %s answered a read at %v with index %d, value %d (written at %d), after answering index %d, value %d (written at %d) before it began",
						node, r.call, r.index, r.value, wi, maxIdx, maxValOp.value, maxVal)
				}
			}
		}
		t.Logf("monotonic: node %q answered %d local reads (restarted: %v), %d went back in time", node, len(reads), restarted[node], violations)
	}
	if len(byNode) < 3 {
		t.Errorf("local reads were answered by %d nodes, want all 3", len(byNode))
	}
	_ = math.MaxInt64
}
