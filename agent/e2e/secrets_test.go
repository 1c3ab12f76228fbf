package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestSecretsNeverInClear runs two full KVM migrations with every kind of
// credential — a private key (root), a password (a root alias) and a
// libvirt SASL password — with debug logging on the coordinator and the
// agent and a Raft snapshot forced afterwards, then looks for each secret,
// in clear and in base64 at every byte alignment, in every log line,
// every API answer (Get and List of every resource, the audit trail, whose
// credential creations it checks are there, a job watch held
// through both migrations), every agent-stream message a bystander host
// (an agent session of a host that runs no job) received meanwhile, the
// ledger snapshot files, the Raft log (bolt) and everything else the
// coordinator and the agent keep on disk.
func TestSecretsNeverInClear(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorldWith(t, worldOptions{coordinatorArgs: []string{"--log-level", "debug", "--snapshot-threshold", "1", "--snapshot-interval", "200ms"}})
	// The driver needs root on the source; a uid-0 alias logs in with a
	// password of this test's own.
	password := "pw-" + randID() + randID() + "-secret"
	testenv.EnsureRootAlias(t, rootAlias, password)
	saslPassword := "sasl-" + randID() + randID() + "-pw"

	secrets := newSecretSet()
	secrets.add("private key", string(w.sshd.ClientKeyPEM))
	for _, line := range strings.Split(string(w.sshd.ClientKeyPEM), "\n") {
		if len(line) >= 40 && !strings.HasPrefix(line, "-----") {
			secrets.add("private key line", line)
		}
	}
	secrets.add("password", password)
	secrets.add("SASL password", saslPassword)
	secrets.selfTest(t)

	pw := w.createCredential(ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, password)
	sasl := w.createCredential(ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, saslPassword)
	src, err := w.f.client.Sources().CreateSource(ctx(t, 10*time.Second), &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		DisplayName: "password and SASL", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{
			Address: w.sshd.Host, SshPort: int32(w.sshd.Port), User: rootAlias, Credential: pw,
			SaslUser: "ferry-sasl", SaslCredential: sasl, HostKey: w.sshd.HostKey}}})
	must(t, err)
	pwSource := src.GetName()

	answers := &answerLog{}
	stopWatch := w.watchAll(answers)
	bystander := startBystander(t, w.f, "bystander-1")

	byKey := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 1 << 20})
	byPassword := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 1 << 20})
	keyJob := w.createJob(w.spec(w.sourceVM(w.source, byKey.Name), nil))
	pwSpec := w.spec(w.sourceVM(pwSource, byPassword.Name), nil)
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: pwSource, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{pwSpec}})
	must(t, err)
	answers.add(resp)
	pwJob := resp.GetJobs()[0].GetName()
	for job, vm := range map[string]*testenv.TestVM{keyJob: byKey, pwJob: byPassword} {
		j := w.waitJob(job, 4*time.Minute, job+" to end", terminal)
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
			t.Fatalf("job %s ended %s: %s", job, j.GetState(), j.GetReason())
		}
		for _, d := range vm.Disks {
			compare(t, d.Path, w.volume(job, d.Target))
		}
	}
	// One more write after the jobs ended: with a threshold of one entry
	// it makes Raft snapshot a ledger that holds the finished jobs.
	done := time.Now()
	_, err = w.f.client.TargetInventory().CreateCluster(ctx(t, 10*time.Second), &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{DisplayName: "after"}})
	must(t, err)
	raftDir := filepath.Join(w.f.dir, "coordinator", "raft")
	var snapshot string
	var state []byte
	testkit.WaitFor(t, time.Minute, "a Raft snapshot taken after the migrations", func() bool {
		snapshot = newestSnapshot(t, raftDir, done)
		if snapshot == "" {
			return false
		}
		// Snapshots are taken often here: one may be reaped between the
		// look and the read; then look again.
		b, err := os.ReadFile(snapshot)
		state = b
		return err == nil
	})
	stopWatch()
	w.readEverything(answers)
	seen := bystander()
	if len(seen.all()) < 2 {
		t.Fatalf("the bystander host received %d messages; want its welcome and heartbeats at least", len(seen.all()))
	}

	if !bytes.Contains(state, []byte(pw)) || !bytes.Contains(state, []byte(keyJob)) {
		t.Fatalf("snapshot %s lacks %s or %s: not the ledger after the migrations", snapshot, pw, keyJob)
	}
	boltLog, err := os.ReadFile(filepath.Join(raftDir, "raft.db"))
	must(t, err)
	if !bytes.Contains(boltLog, []byte(sasl)) {
		t.Fatalf("the Raft log lacks the command that made %s: the scan would prove little", sasl)
	}
	logs := map[string][]string{"ferry-coordinator": w.f.coord.lines(""), "ferry-agent": w.f.agents[w.host].lines("")}
	if !strings.Contains(strings.Join(logs["ferry-agent"], "\n"), "level=DEBUG") || !strings.Contains(strings.Join(logs["ferry-coordinator"], "\n"), "level=DEBUG") {
		t.Fatal("no debug lines in the logs: debug logging is not on, the scan would prove little")
	}

	var found []string
	for name, lines := range logs {
		for i, l := range lines {
			for _, what := range secrets.in([]byte(l)) {
				found = append(found, fmt.Sprintf("%s log line %d: %s: %.200s", name, i+1, what, l))
			}
		}
	}
	for _, a := range answers.all() {
		for _, what := range secrets.in(a.data) {
			found = append(found, fmt.Sprintf("API answer %s: %s", a.what, what))
		}
	}
	for _, a := range seen.all() {
		for _, what := range secrets.in(a.data) {
			found = append(found, fmt.Sprintf("agent-stream message to the bystander host %s: %s", a.what, what))
		}
	}
	scanned := map[string]int64{}
	for _, dir := range []string{filepath.Join(w.f.dir, "coordinator"), w.f.agentDi[w.host], w.cacheDir} {
		found = append(found, scanDir(t, dir, secrets, scanned)...)
	}
	for _, want := range []string{filepath.Join(raftDir, "raft.db"), snapshot} {
		if scanned[want] == 0 {
			t.Errorf("%s was not scanned", want)
		}
	}
	for _, f := range found {
		t.Error("secret in clear: " + f)
	}
	t.Logf("scanned %d log lines, %d API answers, %d agent-stream messages to a bystander host and %d files (%d bytes, Raft log %d bytes, snapshot %s); found %d secrets",
		len(logs["ferry-coordinator"])+len(logs["ferry-agent"]), len(answers.all()), len(seen.all()), len(scanned), sum(scanned),
		scanned[filepath.Join(raftDir, "raft.db")], filepath.Base(filepath.Dir(snapshot)), len(found))
}

// rootAlias is the uid-0 account the password source logs in as.
const rootAlias = "ferryroot"

func (w *world) createCredential(typ ferryv1.CredentialType, secret string) string {
	cr, err := w.f.client.Sources().CreateCredential(ctx(w.t, 10*time.Second), &ferryv1.CreateCredentialRequest{
		Credential: &ferryv1.Credential{Type: typ, Secret: secret}})
	must(w.t, err)
	return cr.GetName()
}

// secretSet holds each secret in the forms it could leak in: clear, and
// base64 (standard and URL alphabets) at the three byte alignments it
// could have inside a longer encoded value.
type secretSet struct {
	clear []string
	forms []secretForm
}

type secretForm struct {
	what string
	b    []byte
}

func newSecretSet() *secretSet { return &secretSet{} }

func (s *secretSet) add(what, secret string) {
	s.clear = append(s.clear, secret)
	s.forms = append(s.forms, secretForm{what, []byte(secret)})
	for pad := range 3 {
		enc := base64.StdEncoding.EncodeToString(append(make([]byte, pad), secret...))
		// Keep the characters that depend on the secret's bytes alone.
		from, to := (pad*8+5)/6, (pad+len(secret))*8/6
		core := enc[from:to]
		s.forms = append(s.forms, secretForm{fmt.Sprintf("%s (base64, offset %d)", what, pad), []byte(core)})
		url := strings.NewReplacer("+", "-", "/", "_").Replace(core)
		if url != core {
			s.forms = append(s.forms, secretForm{fmt.Sprintf("%s (base64url, offset %d)", what, pad), []byte(url)})
		}
	}
}

// in names the forms found in b.
func (s *secretSet) in(b []byte) []string {
	var out []string
	for _, f := range s.forms {
		if bytes.Contains(b, f.b) {
			out = append(out, f.what)
		}
	}
	return out
}

// selfTest shows the scan finds each kind of leak, so a clean result
// means something.
func (s *secretSet) selfTest(t *testing.T) {
	t.Helper()
	secret := s.clear[len(s.clear)-1]
	for _, leak := range []string{
		"msg=x pw=" + secret,
		`{"b":"` + base64.StdEncoding.EncodeToString([]byte("a"+secret+"z")) + `"}`,
		base64.URLEncoding.EncodeToString([]byte("xy" + secret)),
		base64.RawStdEncoding.EncodeToString([]byte(secret)),
	} {
		if len(s.in([]byte(leak))) == 0 {
			t.Fatalf("the scan misses the leak %q", leak)
		}
	}
}

// answerLog keeps every API answer, encoded both as protobuf and as JSON.
type answerLog struct {
	mu sync.Mutex
	a  []answer
}

type answer struct {
	what string
	data []byte
}

func (l *answerLog) add(m proto.Message) {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	js, _ := protojson.Marshal(m)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.a = append(l.a, answer{string(m.ProtoReflect().Descriptor().Name()), append(b, js...)})
}

func (l *answerLog) all() []answer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]answer(nil), l.a...)
}

// watchAll holds a watch on every job, initial state included, until the
// returned stop is called.
func (w *world) watchAll(answers *answerLog) (stop func()) {
	c, cancel := context.WithCancel(context.Background())
	stream, err := w.f.client.Jobs().WatchMigrationJobs(c, &ferryv1.WatchMigrationJobsRequest{SendInitial: true})
	must(w.t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			answers.add(ev)
		}
	}()
	return func() { cancel(); <-done }
}

// readEverything gets and lists every resource, as an operator could.
func (w *world) readEverything(answers *answerLog) {
	t, c := w.t, w.f.client
	inv, srcs, srvs, jobs := c.TargetInventory(), c.Sources(), c.MigrationServers(), c.Jobs()
	add := func(m proto.Message, err error) {
		t.Helper()
		must(t, err)
		answers.add(m)
	}
	cx := func() context.Context { return ctx(t, 30*time.Second) }
	cls, err := inv.ListClusters(cx(), &ferryv1.ListClustersRequest{})
	add(cls, err)
	for _, x := range cls.GetClusters() {
		add(inv.GetCluster(cx(), &ferryv1.GetClusterRequest{Name: x.GetName()}))
	}
	hosts, err := inv.ListHosts(cx(), &ferryv1.ListHostsRequest{})
	add(hosts, err)
	for _, x := range hosts.GetHosts() {
		add(inv.GetHost(cx(), &ferryv1.GetHostRequest{Name: x.GetName()}))
	}
	pss, err := inv.ListPrimaryStorages(cx(), &ferryv1.ListPrimaryStoragesRequest{})
	add(pss, err)
	for _, x := range pss.GetPrimaryStorages() {
		add(inv.GetPrimaryStorage(cx(), &ferryv1.GetPrimaryStorageRequest{Name: x.GetName()}))
	}
	nets, err := inv.ListL3Networks(cx(), &ferryv1.ListL3NetworksRequest{})
	add(nets, err)
	for _, x := range nets.GetL3Networks() {
		add(inv.GetL3Network(cx(), &ferryv1.GetL3NetworkRequest{Name: x.GetName()}))
	}
	mss, err := srvs.ListMigrationServers(cx(), &ferryv1.ListMigrationServersRequest{})
	add(mss, err)
	for _, x := range mss.GetMigrationServers() {
		add(srvs.GetMigrationServer(cx(), &ferryv1.GetMigrationServerRequest{Name: x.GetName()}))
	}
	sources, err := srcs.ListSources(cx(), &ferryv1.ListSourcesRequest{})
	add(sources, err)
	for _, x := range sources.GetSources() {
		add(srcs.GetSource(cx(), &ferryv1.GetSourceRequest{Name: x.GetName()}))
		add(srcs.ListSourceVMs(ctx(t, 60*time.Second), &ferryv1.ListSourceVMsRequest{Source: x.GetName()}))
	}
	creds, err := srcs.ListCredentials(cx(), &ferryv1.ListCredentialsRequest{})
	add(creds, err)
	for _, x := range creds.GetCredentials() {
		add(srcs.GetCredential(cx(), &ferryv1.GetCredentialRequest{Name: x.GetName()}))
	}
	js, err := jobs.ListMigrationJobs(cx(), &ferryv1.ListMigrationJobsRequest{})
	add(js, err)
	for _, x := range js.GetJobs() {
		add(jobs.GetMigrationJob(cx(), &ferryv1.GetMigrationJobRequest{Name: x.GetName()}))
	}
	add(c.Settings().GetSettings(cx(), &ferryv1.GetSettingsRequest{}))
	add(c.Membership().ListMembers(cx(), &ferryv1.ListMembersRequest{}))
	// The audit trail, which records each credential's creation by the
	// names of the fields set: scanned with the rest, and shown to hold
	// those events, so a clean scan of it means something.
	var audited []string
	for tok := ""; ; {
		evs, err := c.Audit().ListAuditEvents(cx(), &ferryv1.ListAuditEventsRequest{PageSize: 500, PageToken: tok})
		add(evs, err)
		for _, ev := range evs.GetAuditEvents() {
			if ev.GetMethod() == "/ferry.v1.SourceService/CreateCredential" && slices.Contains(ev.GetFields(), "credential.secret") {
				audited = append(audited, ev.GetResource())
			}
		}
		if tok = evs.GetNextPageToken(); tok == "" {
			break
		}
	}
	for _, x := range creds.GetCredentials() {
		if !slices.Contains(audited, x.GetName()) {
			t.Errorf("the audit trail has no creation event of %s with its secret's field name (events of CreateCredential: %v)", x.GetName(), audited)
		}
	}
	if len(creds.GetCredentials()) != 3 || len(sources.GetSources()) != 2 || len(js.GetJobs()) != 2 {
		t.Fatalf("read %d credentials, %d sources, %d jobs; want 3, 2, 2", len(creds.GetCredentials()), len(sources.GetSources()), len(js.GetJobs()))
	}
}

// newestSnapshot returns the state file of a Raft snapshot finished after
// since, "" when there is none yet.
func newestSnapshot(t *testing.T, raftDir string, since time.Time) string {
	t.Helper()
	metas, err := filepath.Glob(filepath.Join(raftDir, "snapshots", "*", "meta.json"))
	must(t, err)
	for _, m := range metas {
		if strings.HasSuffix(filepath.Dir(m), ".tmp") {
			continue // still being written; renamed when complete
		}
		if fi, err := os.Stat(m); err == nil && fi.ModTime().After(since) {
			return filepath.Join(filepath.Dir(m), "state.bin")
		}
	}
	return ""
}

// scanDir looks for the secrets in every regular file under dir (TLS
// material and the seal key, which are keys of Ferry's own, aside) and
// records the bytes it read of each file in scanned.
func scanDir(t *testing.T, dir string, secrets *secretSet, scanned map[string]int64) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a file gone while walking (a qemu-nbd socket, a temp file)
			}
			return err
		}
		if d.IsDir() && d.Name() == "tls" {
			return fs.SkipDir
		}
		if !d.Type().IsRegular() || d.Name() == "seal.key" {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		if err != nil {
			return err
		}
		scanned[p] = int64(len(b))
		for _, what := range secrets.in(b) {
			found = append(found, fmt.Sprintf("file %s: %s", p, what))
		}
		return nil
	})
	must(t, err)
	return found
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// startBystander holds an agent session for host, a host with its own
// agent certificate that runs no job, and records every message the
// coordinator sends it; the returned stop ends the session and returns
// them.
func startBystander(t *testing.T, f *ferry, host string) (stop func() *answerLog) {
	t.Helper()
	creds, err := tlsutil.ClientCredentialsFromDir(f.agentTLSDir(host), tlsutil.RoleAgent)
	must(t, err)
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(creds))
	must(t, err)
	c, cancel := context.WithCancel(context.Background())
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(c)
	must(t, err)
	must(t, stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{
		HostName: host, AgentVersion: "bystander", Facts: &ferryv1.HostFacts{Cpus: 1}}}}))
	seen := &answerLog{}
	var mu sync.Mutex
	var recvErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := stream.Recv()
			if err != nil {
				mu.Lock()
				recvErr = err
				mu.Unlock()
				return
			}
			seen.add(msg)
		}
	}()
	beat := make(chan struct{})
	go func() {
		defer close(beat)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-c.Done():
				return
			case <-tick.C:
				_ = stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}})
			}
		}
	}()
	return func() *answerLog {
		mu.Lock()
		err := recvErr
		mu.Unlock()
		if err != nil {
			t.Errorf("the bystander's session ended early: %v", err)
		}
		cancel()
		<-done
		<-beat
		_ = conn.Close()
		return seen
	}
}
