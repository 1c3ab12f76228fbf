package api

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func TestPagination(t *testing.T) {
	e := newEnv(t, true)
	c := ctx(t)
	for i := range 7 {
		must[*ferryv1.Cluster](t)(e.inv.CreateCluster(c, &ferryv1.CreateClusterRequest{
			Cluster: &ferryv1.Cluster{Name: fmt.Sprintf("clusters/c%d", i)}}))
	}
	var names []string
	token := ""
	for pages := 0; ; pages++ {
		resp := must[*ferryv1.ListClustersResponse](t)(e.inv.ListClusters(c, &ferryv1.ListClustersRequest{PageSize: 3, PageToken: token}))
		if len(resp.GetClusters()) > 3 || pages > 3 {
			t.Fatalf("page %d has %d clusters", pages, len(resp.GetClusters()))
		}
		for _, cl := range resp.GetClusters() {
			names = append(names, cl.GetName())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	want := "clusters/c0 clusters/c1 clusters/c2 clusters/c3 clusters/c4 clusters/c5 clusters/c6"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("pages gave %s, want %s", got, want)
	}
	// Sizes: 0 means 50, and more than 500 is served as 500.
	for i := range 510 {
		e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{
			Cluster: &ferryv1.Cluster{Name: fmt.Sprintf("clusters/x%03d", i)}}}})
	}
	for _, tc := range []struct{ size, want int32 }{{0, 50}, {501, 500}, {1000, 500}} {
		resp := must[*ferryv1.ListClustersResponse](t)(e.inv.ListClusters(c, &ferryv1.ListClustersRequest{PageSize: tc.size}))
		if int32(len(resp.GetClusters())) != tc.want || resp.GetNextPageToken() == "" {
			t.Errorf("page_size %d served %d, want %d and a next page", tc.size, len(resp.GetClusters()), tc.want)
		}
	}
}

func TestCredentialSecretNeverReturned(t *testing.T) {
	e := newEnv(t, true)
	e.seed() // creates credentials/pw with testSecret
	c := ctx(t)
	const secret = "another-Secret-42"
	created := must[*ferryv1.Credential](t)(e.sources.CreateCredential(c, &ferryv1.CreateCredentialRequest{
		Credential: &ferryv1.Credential{Name: "credentials/root", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: secret}}))
	got := must[*ferryv1.Credential](t)(e.sources.GetCredential(c, &ferryv1.GetCredentialRequest{Name: "credentials/root"}))
	list := must[*ferryv1.ListCredentialsResponse](t)(e.sources.ListCredentials(c, &ferryv1.ListCredentialsRequest{})).GetCredentials()
	for _, cred := range append([]*ferryv1.Credential{created, got}, list...) {
		if cred.GetSecret() != "" {
			t.Fatalf("%s returned its secret", cred.GetName())
		}
	}
	if len(created.GetFingerprint()) != 16 || created.GetFingerprint() != got.GetFingerprint() || created.GetCreateTime() == nil {
		t.Fatalf("fingerprint %q / %q, create time %v", created.GetFingerprint(), got.GetFingerprint(), created.GetCreateTime())
	}
	// Keyed from the seal key: not the unkeyed SHA-256 anyone could test
	// guesses against.
	if sum := sha256.Sum256([]byte(secret)); created.GetFingerprint() == hex.EncodeToString(sum[:])[:16] ||
		created.GetFingerprint() != e.sealer.Fingerprint([]byte(secret)) {
		t.Fatalf("fingerprint %q is not the seal-keyed HMAC of the secret", created.GetFingerprint())
	}
	sealed, _ := e.ledger.Credential("credentials/root")
	if sealed.GetCredential().GetSecret() != "" || strings.Contains(string(sealed.GetSealedSecret()), secret) {
		t.Fatal("the ledger holds the secret in clear")
	}
	opened, err := e.sealer.Open(sealed.GetSealedSecret(), []byte("credentials/root"))
	if err != nil || string(opened) != secret {
		t.Fatalf("sealed secret opens to %q, %v", opened, err)
	}
	if _, err := e.sealer.Open(sealed.GetSealedSecret(), []byte("credentials/other")); err == nil {
		t.Fatal("the sealed secret is not bound to the credential's name")
	}
	// A refused request does not echo the secret either.
	_, err = e.sources.CreateCredential(c, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY, Secret: secret}})
	wantCode(t, err, codes.InvalidArgument, "credential.secret:")
	if strings.Contains(err.Error(), secret) {
		t.Fatal("the error quotes the secret")
	}
	for _, s := range []string{secret, testSecret} {
		if strings.Contains(e.logs.String(), s) {
			t.Fatalf("the logs hold a secret:\n%s", e.logs.String())
		}
	}
}

func TestMigrationServerUpdates(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	ms := must[*ferryv1.MigrationServer](t)(e.servers.CreateMigrationServer(c, validServer(func(m *ferryv1.MigrationServer) {
		m.MigrationCidr, m.UpstreamBandwidth, m.DownstreamBandwidth = "10.20.0.7/24", "1000Kbps", "2gbps"
	})))
	if ms.GetMigrationCidr() != "10.20.0.0/24" || ms.GetUpstreamBandwidth() != "1Mbps" || ms.GetUpstreamBitsPerSecond() != 1e6 ||
		ms.GetDownstreamBandwidth() != "2Gbps" || !ms.GetEnabled() || ms.GetConnected() {
		t.Fatalf("created %v", ms)
	}
	name := ms.GetName()
	ms = must[*ferryv1.DisableMigrationServerResponse](t)(e.servers.DisableMigrationServer(c, &ferryv1.DisableMigrationServerRequest{Name: name})).GetMigrationServer()
	if ms.GetEnabled() {
		t.Fatal("still enabled")
	}
	ms = must[*ferryv1.EnableMigrationServerResponse](t)(e.servers.EnableMigrationServer(c, &ferryv1.EnableMigrationServerRequest{Name: name})).GetMigrationServer()
	if !ms.GetEnabled() {
		t.Fatal("still disabled")
	}
	// Clear upstream, leave downstream alone.
	ms = must[*ferryv1.SetMigrationServerBandwidthResponse](t)(e.servers.SetMigrationServerBandwidth(c, &ferryv1.SetMigrationServerBandwidthRequest{
		Name: name, UpstreamBandwidth: proto.String("")})).GetMigrationServer()
	if ms.GetUpstreamBandwidth() != "" || ms.GetUpstreamBitsPerSecond() != 0 || ms.GetDownstreamBandwidth() != "2Gbps" {
		t.Fatalf("after clearing upstream: %v", ms)
	}
	kvm := must[*ferryv1.MigrationServer](t)(e.servers.GetMigrationServer(c, &ferryv1.GetMigrationServerRequest{Name: "migrationServers/kvm"}))
	if !kvm.GetConnected() {
		t.Fatal("a server whose host is connected shows as disconnected")
	}
	list := must[*ferryv1.ListMigrationServersResponse](t)(e.servers.ListMigrationServers(c, &ferryv1.ListMigrationServersRequest{
		Type: ferryv1.Platform_PLATFORM_VMWARE})).GetMigrationServers()
	if len(list) != 1 || list[0].GetName() != "migrationServers/vmw" {
		t.Fatalf("vmware servers: %v", list)
	}
}

func TestUpdateSettings(t *testing.T) {
	e := newEnv(t, true)
	c := ctx(t)
	before := must[*ferryv1.Settings](t)(e.settings.GetSettings(c, &ferryv1.GetSettingsRequest{}))
	resp := must[*ferryv1.Settings](t)(e.settings.UpdateSettings(c, &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{JobParallelism: 3, CacheRetention: durationpb.New(time.Hour)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"job_parallelism"}},
	}))
	if resp.GetJobParallelism() != 3 || !proto.Equal(resp.GetCacheRetention(), before.GetCacheRetention()) {
		t.Fatalf("masked update gave %v", resp)
	}
	resp = must[*ferryv1.Settings](t)(e.settings.UpdateSettings(c, &ferryv1.UpdateSettingsRequest{
		Settings: &ferryv1.Settings{AgentGracePeriod: durationpb.New(time.Minute)}}))
	if resp.GetJobParallelism() != 3 || resp.GetAgentGracePeriod().AsDuration() != time.Minute {
		t.Fatalf("unmasked update gave %v", resp)
	}
	if before.GetGuestShutdownTimeout().AsDuration() != 10*time.Minute {
		t.Fatalf("guest shutdown timeout %v by default, want 10m", before.GetGuestShutdownTimeout().AsDuration())
	}
	resp = must[*ferryv1.Settings](t)(e.settings.UpdateSettings(c, &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{GuestShutdownTimeout: durationpb.New(2 * time.Minute), JobParallelism: 7},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"guest_shutdown_timeout"}}}))
	if resp.GetGuestShutdownTimeout().AsDuration() != 2*time.Minute || resp.GetJobParallelism() != 3 {
		t.Fatalf("guest shutdown timeout update gave %v", resp)
	}
}

func TestClusterMembers(t *testing.T) {
	e := newEnv(t, true)
	c := ctx(t)
	e.raft.leaderAddr.Store("127.0.0.1:7443")
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutNode{PutNode: &ledgerv1.PutNode{Node: &ledgerv1.Node{
		Id: "node-a", ApiAddress: "127.0.0.1:7443", RaftAddress: "127.0.0.1:7000"}}}})
	added := must[*ferryv1.AddVoterResponse](t)(e.cluster.AddVoter(c, &ferryv1.AddVoterRequest{
		Id: "node-b", RaftAddress: "127.0.0.1:7001", ApiAddress: "127.0.0.1:7444"}))
	if len(added.GetMembers()) != 2 || added.GetMembers()[1].GetApiAddress() != "127.0.0.1:7444" {
		t.Fatalf("after AddVoter: %v", added.GetMembers())
	}
	resp := must[*ferryv1.ListMembersResponse](t)(e.cluster.ListMembers(c, &ferryv1.ListMembersRequest{}))
	if resp.GetLeaderId() != "node-a" || resp.GetLeaderAddress() != "127.0.0.1:7443" || resp.GetNodeId() != "node-a" ||
		resp.GetLastIndex() == 0 || resp.GetAppliedIndex() != resp.GetLastIndex() {
		t.Fatalf("ListMembers: %v", resp)
	}
	// Paged by id (AIP-158): one member a page, the leader named on each.
	first := must[*ferryv1.ListMembersResponse](t)(e.cluster.ListMembers(c, &ferryv1.ListMembersRequest{PageSize: 1}))
	if len(first.GetMembers()) != 1 || first.GetMembers()[0].GetId() != "node-a" || first.GetNextPageToken() == "" || first.GetLeaderId() != "node-a" {
		t.Fatalf("ListMembers page 1: %v", first)
	}
	second := must[*ferryv1.ListMembersResponse](t)(e.cluster.ListMembers(c, &ferryv1.ListMembersRequest{PageSize: 1, PageToken: first.GetNextPageToken()}))
	if len(second.GetMembers()) != 1 || second.GetMembers()[0].GetId() != "node-b" || second.GetNextPageToken() != "" || second.GetLeaderId() != "node-a" {
		t.Fatalf("ListMembers page 2: %v", second)
	}
	_, err := e.cluster.ListMembers(c, &ferryv1.ListMembersRequest{PageToken: "!"})
	wantCode(t, err, codes.InvalidArgument, "page_token: ")
	removed := must[*ferryv1.RemoveVoterResponse](t)(e.cluster.RemoveVoter(c, &ferryv1.RemoveVoterRequest{Id: "node-b"}))
	if len(removed.GetMembers()) != 1 {
		t.Fatalf("after RemoveVoter: %v", removed.GetMembers())
	}
	if _, ok := e.ledger.Node("node-b"); ok {
		t.Fatal("the removed node's address is still recorded")
	}
}

func TestLinearizableRead(t *testing.T) {
	e := newEnv(t, true)
	c := ctx(t)
	must[*ferryv1.Settings](t)(e.settings.GetSettings(c, &ferryv1.GetSettingsRequest{}))
	if n := e.raft.linearized.Load(); n != 0 {
		t.Fatalf("a plain read made %d linearizable reads", n)
	}
	must[*ferryv1.Settings](t)(e.settings.GetSettings(grpcutil.WithLinearizableRead(c), &ferryv1.GetSettingsRequest{}))
	if n := e.raft.linearized.Load(); n != 1 {
		t.Fatalf("a linearizable read made %d linearizable reads, want 1", n)
	}
}

func TestFollowerWithoutDialerPointsAtLeader(t *testing.T) {
	e := newEnv(t, false)
	e.raft.leaderAddr.Store("10.0.0.1:7443")
	_, err := e.inv.CreateCluster(ctx(t), &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}})
	wantCode(t, err, codes.Unavailable, "not the leader; the leader is at 10.0.0.1:7443")
	// Plain reads are served locally.
	must[*ferryv1.ListClustersResponse](t)(e.inv.ListClusters(ctx(t), &ferryv1.ListClustersRequest{}))
}

func TestSourceDefaults(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	kvm := must[*ferryv1.Source](t)(e.sources.CreateSource(c, validKVMSource(func(*ferryv1.Source) {})))
	if kvm.GetKvm().GetSshPort() != 22 || kvm.GetKvm().GetUser() != "root" || kvm.GetCreateTime() == nil {
		t.Fatalf("kvm source defaults: %v", kvm)
	}
	vc := must[*ferryv1.Source](t)(e.sources.CreateSource(c, &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_VMWARE, Vcenter: &ferryv1.VCenterConnection{Address: "10.1.2.3", User: "u",
			Credential: "credentials/pw", Thumbprint: "0123456789abcdef0123456789abcdef01234567"}}}))
	if vc.GetVcenter().GetPort() != 443 || vc.GetVcenter().GetThumbprint() != "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67" {
		t.Fatalf("vcenter source: %v", vc.GetVcenter())
	}
	sha256Pin := strings.Repeat("ab", 32)
	vc256 := must[*ferryv1.Source](t)(e.sources.CreateSource(c, &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_VMWARE, Vcenter: &ferryv1.VCenterConnection{Address: "vc.example.com", User: "u",
			Credential: "credentials/pw", Thumbprint: sha256Pin, SkipHostnameCheck: true}}})).GetVcenter()
	if vc256.GetThumbprint() != strings.TrimSuffix(strings.Repeat("AB:", 32), ":") || !vc256.GetSkipHostnameCheck() {
		t.Fatalf("vcenter source pinned by SHA-256, hostname check skipped: %v", vc256)
	}
	vcCA := must[*ferryv1.Source](t)(e.sources.CreateSource(c, &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_VMWARE, Vcenter: &ferryv1.VCenterConnection{Address: "vc.example.com", User: "u",
			Credential: "credentials/pw", CaCertificate: testCAPEM + testCAPEM}}})).GetVcenter()
	if vcCA.GetCaCertificate() != testCAPEM+testCAPEM || vcCA.GetSkipHostnameCheck() {
		t.Fatalf("vcenter source with a CA bundle: %v", vcCA)
	}
	list := must[*ferryv1.ListSourcesResponse](t)(e.sources.ListSources(c, &ferryv1.ListSourcesRequest{Type: ferryv1.Platform_PLATFORM_VMWARE}))
	if len(list.GetSources()) != 4 {
		t.Fatalf("vmware sources: %v", list.GetSources())
	}
	_, err := e.sources.DeleteCredential(c, &ferryv1.DeleteCredentialRequest{Name: "credentials/pw"})
	wantCode(t, err, codes.FailedPrecondition, "name: source sources/")
}
