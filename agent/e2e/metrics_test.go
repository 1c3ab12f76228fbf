package e2e

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// sample is one series of a scrape: name{labels} value.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var seriesLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// scrape reads a plain-HTTP /metrics and returns its body and samples.
func scrape(t testing.TB, addr string) ([]byte, []sample) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s %v: %s", addr, resp.Status, err, body)
	}
	var out []sample
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		m := seriesLine.FindStringSubmatch(sc.Text())
		if m == nil || strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		s := sample{name: m[1], labels: map[string]string{}, value: v}
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			s.labels[p[1]] = p[2]
		}
		out = append(out, s)
	}
	return body, out
}

// value is the value of the series name with these labels (others any),
// and whether there is one.
func value(samples []sample, name string, labels ...string) (float64, bool) {
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			ok = ok && s.labels[labels[i]] == labels[i+1]
		}
		if ok {
			return s.value, true
		}
	}
	return 0, false
}

// promtoolCheck lints a scrape with 'promtool check metrics' in a subtest,
// which is skipped, saying so, where promtool is missing (failed under
// CI=true: testenv.Unavailable).
func promtoolCheck(t *testing.T, what string, body []byte) {
	t.Helper()
	t.Run("promtool "+what, func(t *testing.T) {
		if _, err := exec.LookPath("promtool"); err != nil {
			testenv.Unavailable(t, "promtool is not installed, so %s is not linted: run scripts/deps.sh (Debian package prometheus)", what)
		}
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics of %s: %v\n%s", what, err, out)
		}
	})
}

// TestMetricsDuringMigration scrapes the coordinator's and the agent's
// /metrics while two real migrations run one after the other (job
// parallelism 1): the job gauge moves through queued, running (in its
// phases) and succeeded, and the bytes copied rise, seen between 0 and the
// end, to the data the source disks hold (qemu-img map), which the agent's
// counter equals too. The scrapes pass promtool's lint, and name no job.
// The audit trail holds the batch's creation and each job's state changes.
func TestMetricsDuringMigration(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorldWith(t, worldOptions{coordinatorArgs: []string{"--metrics-listen", "127.0.0.1:0"},
		agentArgs: []string{"--metrics-listen", "127.0.0.1:0"}})
	coordMetrics, agentMetrics := metricsAddr(t, w.f.coord), metricsAddr(t, w.f.agents[w.host])
	server := strings.TrimPrefix(w.server, "migrationServers/")
	// Two VMs, one job at a time: the second waits queued while the first
	// runs, so the gauge shows both states at once.
	var specs []*ferryv1.MigrationJobSpec
	var data int64
	for range 2 {
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 16 << 20})
		for _, d := range src.Disks {
			data += allocated(t, d.Path)
		}
		specs = append(specs, w.spec(w.sourceVM(w.source, src.Name), nil))
	}
	_, err := w.f.client.Settings().UpdateSettings(ctx(t, 10*time.Second), &ferryv1.UpdateSettingsRequest{
		Settings: &ferryv1.Settings{JobParallelism: 1}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"job_parallelism"}}})
	must(t, err)
	// The copy at 8 MiB/s takes seconds: scrapes see it rise.
	w.setBandwidth(nil, proto.String(eightMiBps))
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 30*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: w.source, MigrationServer: w.server, Jobs: specs})
	must(t, err)
	var names []string
	for _, j := range resp.GetJobs() {
		names = append(names, j.GetName())
	}

	states := map[string]bool{}
	var copied []float64
	watch := func(samples []sample) {
		for _, s := range samples {
			if s.name == "ferry_migration_jobs" && s.value > 0 {
				states[s.labels["state"]+"/"+s.labels["phase"]] = true
			}
		}
		if v, ok := value(samples, "ferry_migration_bytes_total", "server", server, "direction", "copied"); ok {
			copied = append(copied, v)
		}
	}
	var body []byte
	testkit.WaitFor(t, 150*time.Second, "the jobs to end, scraping", func() bool {
		var s []sample
		body, s = scrape(t, coordMetrics)
		watch(s)
		return terminal(w.job(names[0])) && terminal(w.job(names[1]))
	})
	for _, n := range names {
		if job := w.job(n); job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
			t.Fatalf("job %s ended %s: %s", n, job.GetState(), job.GetReason())
		}
	}
	// The last counts reach the gauge and the counter a scrape after the
	// ledger has them.
	testkit.WaitFor(t, 10*time.Second, "the succeeded job in the gauge", func() bool {
		var s []sample
		body, s = scrape(t, coordMetrics)
		watch(s)
		v, _ := value(s, "ferry_migration_jobs", "state", "succeeded")
		return v == 2
	})
	t.Logf("job states seen: %v; copied bytes by scrape: %v; source data %d", states, copied, data)
	if !states["queued/"] || !states["running/converting"] || !states["succeeded/"] {
		t.Errorf("the job gauge went through %v; want queued, running/converting and succeeded", states)
	}
	final := copied[len(copied)-1]
	if final != float64(data) {
		t.Errorf("ferry_migration_bytes_total{direction=copied} ended at %.0f, want the source disks' data, %d bytes", final, data)
	}
	between := 0
	for i, v := range copied {
		if i > 0 && v < copied[i-1] {
			t.Errorf("the copied counter went down: %v", copied)
			break
		}
		if v > 0 && v < final {
			between++
		}
	}
	if between == 0 {
		t.Errorf("no scrape saw the copied counter between 0 and %.0f: %v", final, copied)
	}
	for _, dir := range []string{"uploaded", "verified"} {
		if v, _ := value(sampled(t, coordMetrics), "ferry_migration_bytes_total", "server", server, "direction", dir); v <= 0 {
			t.Errorf("ferry_migration_bytes_total{direction=%s} = %.0f, want > 0", dir, v)
		}
	}
	cs := sampled(t, coordMetrics)
	for _, want := range []string{"ferry_raft_term", "ferry_raft_commit_index", "ferry_raft_applied_index", "ferry_agent_sessions",
		"ferry_migration_server_cache_free_bytes", "ferry_migration_server_cache_used_bytes", "ferry_migration_job_duration_seconds_count",
		"ferry_api_requests_total", "ferry_raft_apply_duration_seconds_count"} {
		if _, ok := value(cs, want); !ok {
			t.Errorf("the coordinator's scrape has no %s", want)
		}
	}
	if v, _ := value(cs, "ferry_api_requests_total", "method", "/ferry.v1.MigrationJobService/CreateMigrationJobs", "code", "OK"); v != 1 {
		t.Errorf("ferry_api_requests_total of CreateMigrationJobs OK = %.0f, want 1", v)
	}
	if v, _ := value(cs, "ferry_migration_job_duration_seconds_count", "state", "succeeded"); v != 2 {
		t.Errorf("ferry_migration_job_duration_seconds_count{state=succeeded} = %.0f, want 2", v)
	}
	promtoolCheck(t, "coordinator", body)

	// The audit trail has the batch's creation and each state change.
	evs, err := w.f.client.Audit().ListAuditEvents(ctx(t, 10*time.Second), &ferryv1.ListAuditEventsRequest{Resource: names[1]})
	must(t, err)
	var changes []string
	for _, ev := range evs.GetAuditEvents() {
		if ev.GetMethod() == "job-state-change" {
			changes = append([]string{ev.GetPreviousState().String() + ">" + ev.GetState().String()}, changes...)
		}
	}
	wantChanges := "MIGRATION_JOB_STATE_UNSPECIFIED>MIGRATION_JOB_STATE_QUEUED MIGRATION_JOB_STATE_QUEUED>MIGRATION_JOB_STATE_RUNNING " +
		"MIGRATION_JOB_STATE_RUNNING>MIGRATION_JOB_STATE_SUCCEEDED"
	if got := strings.Join(changes, " "); got != wantChanges {
		t.Errorf("audit events of %s's state: %s, want %s", names[1], got, wantChanges)
	}
	// The call's event follows what the call applied (it is recorded
	// when the call ends): the job's creation event is not the oldest.
	created := 0
	for _, ev := range evs.GetAuditEvents() {
		if ev.GetMethod() == "/ferry.v1.MigrationJobService/CreateMigrationJobs" && ev.GetResource() == w.server &&
			ev.GetResult() == "OK" && slices.Contains(ev.GetCreated(), names[1]) {
			created++
		}
	}
	if created != 1 {
		t.Errorf("%d CreateMigrationJobs events on %s name %s, want 1: %v", created, w.server, names[1], evs.GetAuditEvents())
	}

	agentBody, as := scrape(t, agentMetrics)
	if v, _ := value(as, "ferry_agent_bytes_total", "direction", "copied"); v != float64(data) {
		t.Errorf("the agent's ferry_agent_bytes_total{direction=copied} = %.0f, want %d", v, data)
	}
	if v, _ := value(as, "ferry_agent_session_connected"); v != 1 {
		t.Errorf("ferry_agent_session_connected = %.0f, want 1", v)
	}
	if v, _ := value(as, "ferry_agent_job_results_total", "outcome", "succeeded"); v != 2 {
		t.Errorf("ferry_agent_job_results_total{outcome=succeeded} = %.0f, want 2", v)
	}
	promtoolCheck(t, "agent", agentBody)
	for _, n := range names {
		if id := strings.TrimPrefix(n, "migrationJobs/"); bytes.Contains(body, []byte(id)) || bytes.Contains(agentBody, []byte(id)) {
			t.Errorf("a scrape names job %s: job ids are no label values", n)
		}
	}
}

var servingMetrics = regexp.MustCompile(`msg="serving metrics" .*url=http://(\S+)/metrics`)

// metricsAddr is where p serves /metrics, from its log.
func metricsAddr(t testing.TB, p *proc) string {
	t.Helper()
	var addr string
	testkit.WaitFor(t, 10*time.Second, p.name+" to serve metrics", func() bool {
		for _, l := range p.lines(`msg="serving metrics"`) {
			if m := servingMetrics.FindStringSubmatch(l); m != nil {
				addr = m[1]
				return true
			}
		}
		return false
	})
	return addr
}

func sampled(t testing.TB, addr string) []sample {
	_, s := scrape(t, addr)
	return s
}
