package fsm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func cmdAt(sec int, c *ledgerv1.Command) *ledgerv1.Command {
	c.Time = timestamppb.New(t0.Add(time.Duration(sec) * time.Second))
	return c
}

func job(name, ip string) *ferryv1.MigrationJob {
	return &ferryv1.MigrationJob{
		Name: name, Source: "sources/kvm1", SourceVm: "vm-" + name, MigrationServer: "migrationServers/ms1",
		Target: &ferryv1.TargetVm{
			VmName: "t-" + name, Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/ps1", Cpus: 2, MemoryBytes: 1 << 30,
			Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 1 << 30}},
			Nics:  []*ferryv1.TargetNic{{SourceMac: "52:54:00:00:00:01", L3Network: "l3Networks/n1", Ip: ip}},
		},
	}
}

// warmJob is job with options.mode WARM.
func warmJob(name, ip string) *ferryv1.MigrationJob {
	j := job(name, ip)
	if j.Options == nil {
		j.Options = &ferryv1.MigrationOptions{}
	}
	j.Options.Mode = ferryv1.MigrationMode_MIGRATION_MODE_WARM
	return j
}

// everyCommand is one of each command, in an order the ledger accepts.
func everyCommand() []*ledgerv1.Command {
	cmds := []*ledgerv1.Command{
		{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c1", Zone: "z"}, RequestId: "r-c1"}}},
		{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c2"}}}},
		{Op: &ledgerv1.Command_DeleteCluster{DeleteCluster: &ledgerv1.DeleteResource{Name: "clusters/c2"}}},
		{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{Name: "hosts/h1", Cluster: "clusters/c1", Facts: &ferryv1.HostFacts{Cpus: 2, CacheFreeBytes: 100 << 30}}}}},
		{Op: &ledgerv1.Command_SetBundleSigningKey{SetBundleSigningKey: &ledgerv1.SetBundleSigningKey{SealedPrivateKey: []byte("sealed"), PublicKey: []byte("public-key-32-bytes-long-enough!")}}},
		{Op: &ledgerv1.Command_SetHostConnected{SetHostConnected: &ledgerv1.SetHostConnected{Name: "hosts/h1", Connected: true}}},
		{Request: &ledgerv1.RequestStamp{RequestId: "r-maint", Method: "SetHostMaintenance", Target: "hosts/h1"},
			Op: &ledgerv1.Command_SetHostMaintenance{SetHostMaintenance: &ledgerv1.SetHostMaintenance{Name: "hosts/h1", Maintenance: true}}},
		{Op: &ledgerv1.Command_SetPendingCleanup{SetPendingCleanup: &ledgerv1.SetPendingCleanup{Host: "hosts/h1", Job: "migrationJobs/old",
			Cleanup: &ferryv1.PendingCleanup{Epoch: 2, Target: &ferryv1.TargetVm{VmName: "old"}, Reason: "host down"}}}},
		{Op: &ledgerv1.Command_SetPendingCleanup{SetPendingCleanup: &ledgerv1.SetPendingCleanup{Host: "hosts/h1", Job: "migrationJobs/older",
			Cleanup: &ferryv1.PendingCleanup{Epoch: 1}}}},
		{Op: &ledgerv1.Command_SetPendingCleanup{SetPendingCleanup: &ledgerv1.SetPendingCleanup{Host: "hosts/h1", Job: "migrationJobs/older"}}},
		// The agent's next hello rewrites the facts; maintenance and pending cleanups stay.
		{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{Name: "hosts/h1", Cluster: "clusters/c1", Connected: true, Facts: &ferryv1.HostFacts{Cpus: 2, CacheFreeBytes: 100 << 30}}}}},
		{Op: &ledgerv1.Command_PutPrimaryStorage{PutPrimaryStorage: &ledgerv1.PutPrimaryStorage{PrimaryStorage: &ferryv1.PrimaryStorage{Name: "primaryStorages/ps1", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, Path: "/var/lib/ferry"}}}},
		{Op: &ledgerv1.Command_PutPrimaryStorage{PutPrimaryStorage: &ledgerv1.PutPrimaryStorage{PrimaryStorage: &ferryv1.PrimaryStorage{Name: "primaryStorages/ps2", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, CephPool: "rbd"}}}},
		{Op: &ledgerv1.Command_DeletePrimaryStorage{DeletePrimaryStorage: &ledgerv1.DeleteResource{Name: "primaryStorages/ps2"}}},
		{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: &ferryv1.L3Network{Name: "l3Networks/n1", Cluster: "clusters/c1", LibvirtNetwork: "default", IpRangeStart: "10.0.0.10", IpRangeEnd: "10.0.0.20", PrefixLength: 24}}}},
		{Op: &ledgerv1.Command_UpdateResource{UpdateResource: &ledgerv1.UpdateResource{Resource: &ledgerv1.UpdateResource_L3Network{
			L3Network: &ferryv1.L3Network{Name: "l3Networks/n1", IpRangeEnd: "10.0.0.30", Description: "widened"}}, Paths: []string{"ip_range_end", "description"}}}},
		{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: &ferryv1.L3Network{Name: "l3Networks/n2", Cluster: "clusters/c1", Bridge: "br0"}}}},
		{Op: &ledgerv1.Command_DeleteL3Network{DeleteL3Network: &ledgerv1.DeleteResource{Name: "l3Networks/n2"}}},
		{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/ms1", Host: "hosts/h1", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/var/cache/ferry", Enabled: true}}}},
		{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/ms2", Host: "hosts/h2", Type: ferryv1.Platform_PLATFORM_VMWARE, CachePath: "/c"}}}},
		{Op: &ledgerv1.Command_SetMigrationServerEnabled{SetMigrationServerEnabled: &ledgerv1.SetMigrationServerEnabled{Name: "migrationServers/ms2", Enabled: true}}},
		{Op: &ledgerv1.Command_SetMigrationServerBandwidth{SetMigrationServerBandwidth: &ledgerv1.SetMigrationServerBandwidth{Name: "migrationServers/ms1", DownstreamBandwidth: proto.String("64Mbps"), DownstreamBitsPerSecond: proto.Int64(64_000_000)}},
			Request: &ledgerv1.RequestStamp{RequestId: "r-bw", Method: "SetMigrationServerBandwidth", Target: "migrationServers/ms1"}},
		{Op: &ledgerv1.Command_PutCredential{PutCredential: &ledgerv1.PutCredential{Credential: &ledgerv1.SealedCredential{Credential: &ferryv1.Credential{Name: "credentials/k1", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY, Fingerprint: "ab12"}, SealedSecret: []byte{1, 2, 3}}}}},
		{Op: &ledgerv1.Command_PutCredential{PutCredential: &ledgerv1.PutCredential{Credential: &ledgerv1.SealedCredential{Credential: &ferryv1.Credential{Name: "credentials/k2", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD}, SealedSecret: []byte{4}}}}},
		{Op: &ledgerv1.Command_DeleteCredential{DeleteCredential: &ledgerv1.DeleteResource{Name: "credentials/k2"}}},
		{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{Source: &ferryv1.Source{Name: "sources/kvm1", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "127.0.0.1", SshPort: 2222, User: "root", Credential: "credentials/k1"}}}}},
		{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{Source: &ferryv1.Source{Name: "sources/kvm2", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "h2", Credential: "credentials/k1"}}}}},
		{Op: &ledgerv1.Command_DeleteSource{DeleteSource: &ledgerv1.DeleteResource{Name: "sources/kvm2"}}},
		{Op: &ledgerv1.Command_RecordSourceHostKey{RecordSourceHostKey: &ledgerv1.RecordSourceHostKey{Name: "sources/kvm1", HostKey: "ssh-ed25519 AAAA"}}},
		{Op: &ledgerv1.Command_RecordSourceSync{RecordSourceSync: &ledgerv1.RecordSourceSync{Source: "sources/kvm1", Inventory: &ferryv1.SourceInventory{
			Product: &ferryv1.SourceProduct{Version: "9.0.0", ApiType: "libvirt"},
			Hosts:   []*ferryv1.SourceHost{{Id: "h", Name: "kvm1", Version: "9.0.0"}},
			Vms:     []*ferryv1.SourceVm{{Id: "web", Name: "web", Cpus: 2}}}}}},
		{Op: &ledgerv1.Command_RecordSourceSync{RecordSourceSync: &ledgerv1.RecordSourceSync{Source: "sources/kvm1", Error: "ssh: connection refused"}}},
		{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{RequestId: "r-g1", NetworkMappingGroup: &ferryv1.NetworkMappingGroup{
			Name: "networkMappingGroups/g1", Source: "sources/kvm1", Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "default", L3Network: "l3Networks/n1"}}}}}},
		{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{Update: true, NetworkMappingGroup: &ferryv1.NetworkMappingGroup{
			Name: "networkMappingGroups/g1", DisplayName: "lab", Source: "sources/kvm1", Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "br-lab", L3Network: "l3Networks/n1"}}}}}},
		{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{NetworkMappingGroup: &ferryv1.NetworkMappingGroup{
			Name: "networkMappingGroups/g2", Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "VM Network", L3Network: "l3Networks/n1"}}}}}},
		{Op: &ledgerv1.Command_DeleteNetworkMappingGroup{DeleteNetworkMappingGroup: &ledgerv1.DeleteResource{Name: "networkMappingGroups/g2"}}},
		{Op: &ledgerv1.Command_RevokeCertificate{RevokeCertificate: &ledgerv1.RevokeCertificate{Certificate: &ferryv1.RevokedCertificate{
			Name: "revokedCertificates/1f", Serial: "1f", Reason: "laptop lost", RevokedBy: "ferry://operator/ferryctl"}}}},
		{Op: &ledgerv1.Command_RecordAuditEvent{RecordAuditEvent: &ledgerv1.RecordAuditEvent{Event: &ferryv1.AuditEvent{
			Identity: "ferry://operator/ferryctl", Method: "/ferry.v1.CertificateService/RevokeCertificate", Resource: "revokedCertificates/1f",
			Fields: []string{"serial", "reason"}, Result: "OK"}, Retention: &ledgerv1.AuditRetention{MaxAgeSeconds: 3600, MaxEvents: 50}}}},
		{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{RequestId: "r-jobs", Jobs: []*ferryv1.MigrationJob{job("migrationJobs/j1", "10.0.0.10"), job("migrationJobs/j2", "10.0.0.11"), job("migrationJobs/j3", "10.0.0.12")}}}},
		{Op: &ledgerv1.Command_SetJobWaitingReason{SetJobWaitingReason: &ledgerv1.SetJobWaitingReason{Name: "migrationJobs/j3", Reason: "job parallelism 10 reached"}}},
		{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{RequestId: "r-warm", Jobs: []*ferryv1.MigrationJob{warmJob("migrationJobs/jw", "10.0.0.40")}}}},
		{Op: &ledgerv1.Command_SetMigrationJobCutover{SetMigrationJobCutover: &ledgerv1.SetMigrationJobCutover{Name: "migrationJobs/jw", CutoverTime: timestamppb.New(time.Unix(1700000000, 0))}}},
		{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: "migrationJobs/jw"}}},
		{Op: &ledgerv1.Command_DeleteMigrationJob{DeleteMigrationJob: &ledgerv1.DeleteResource{Name: "migrationJobs/jw"}}},
		{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/j1", Host: "hosts/h1", Epoch: 1}}},
		{Op: &ledgerv1.Command_CheckpointMigrationJob{CheckpointMigrationJob: &ledgerv1.CheckpointMigrationJob{Name: "migrationJobs/j1", Epoch: 1, Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING, Disks: []*ferryv1.DiskProgress{{SourceDisk: "vda", TotalBytes: 1 << 30, DoneBytes: 1 << 29}}}}},
		{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{Name: "migrationJobs/j1", Epoch: 1, State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED, Warnings: []string{"started stopped"}}}},
		{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/j2", Host: "hosts/h1", Epoch: 1}}},
		{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: "migrationJobs/j2", Reason: "operator"}}},
		// j2 is placed again at its restart: every replica records the leader's host.
		{Op: &ledgerv1.Command_RestartMigrationJob{RestartMigrationJob: &ledgerv1.RestartMigrationJob{Name: "migrationJobs/j2",
			TargetHost: "hosts/h2", PlacementReason: "chosen again at restart: allocation strategy fewest_vms: hosts/h2 (0 VMs: 0 running, 0 of queued and running jobs)"}}},
		{Op: &ledgerv1.Command_DeleteMigrationJob{DeleteMigrationJob: &ledgerv1.DeleteResource{Name: "migrationJobs/j1"}}},
		// j4 succeeds and is deleted: its VM's address is reserved, then released.
		{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{job("migrationJobs/j4", "10.0.0.13")}}}},
		{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/j4", Host: "hosts/h1", Epoch: 1}}},
		{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{Name: "migrationJobs/j4", Epoch: 1, State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED}}},
		{Op: &ledgerv1.Command_DeleteMigrationJob{DeleteMigrationJob: &ledgerv1.DeleteResource{Name: "migrationJobs/j4"}}},
		{Op: &ledgerv1.Command_ReleaseAddress{ReleaseAddress: &ledgerv1.ReleaseAddress{Network: "l3Networks/n1", Ip: "10.0.0.13"}}},
		{Op: &ledgerv1.Command_PutSettings{PutSettings: &ledgerv1.PutSettings{Settings: &ferryv1.Settings{JobParallelism: 4, CacheRetention: durationpb.New(time.Hour), AgentGracePeriod: durationpb.New(time.Minute)},
			Etag: ledger.ETag(ledger.DefaultSettings())}}},
		{Op: &ledgerv1.Command_PutNode{PutNode: &ledgerv1.PutNode{Node: &ledgerv1.Node{Id: "n1", ApiAddress: "127.0.0.1:7443", RaftAddress: "127.0.0.1:7444"}}}},
		{Op: &ledgerv1.Command_PutNode{PutNode: &ledgerv1.PutNode{Node: &ledgerv1.Node{Id: "n2", ApiAddress: "127.0.0.1:7453"}}}},
		{Op: &ledgerv1.Command_DeleteNode{DeleteNode: &ledgerv1.DeleteResource{Name: "n2"}}},
		{Op: &ledgerv1.Command_Batch{Batch: &ledgerv1.Batch{Commands: []*ledgerv1.Command{
			{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{Name: "hosts/h2"}}}},
			{Op: &ledgerv1.Command_SetHostConnected{SetHostConnected: &ledgerv1.SetHostConnected{Name: "hosts/h2", Connected: true}}},
		}}}},
		{Op: &ledgerv1.Command_DeleteMigrationServer{DeleteMigrationServer: &ledgerv1.DeleteResource{Name: "migrationServers/ms2"}}},
	}
	for i, c := range cmds {
		cmdAt(i, c)
	}
	return cmds
}

// inventoryCommands are the commands of everyCommand before its first job.
func inventoryCommands() []*ledgerv1.Command {
	cmds := everyCommand()
	for i, c := range cmds {
		if c.GetCreateMigrationJobs() != nil {
			return cmds[:i]
		}
	}
	return cmds
}

// TestEveryCommandIsCovered fails when a oneof case is added without a
// case in everyCommand.
func TestEveryCommandIsCovered(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range everyCommand() {
		seen[string(c.ProtoReflect().WhichOneof(c.ProtoReflect().Descriptor().Oneofs().ByName("op")).Name())] = true
	}
	fields := (&ledgerv1.Command{}).ProtoReflect().Descriptor().Oneofs().ByName("op").Fields()
	for i := 0; i < fields.Len(); i++ {
		if name := string(fields.Get(i).Name()); !seen[name] {
			t.Errorf("command %s has no case in everyCommand", name)
		}
	}
}

func applyAll(t *testing.T, f *FSM, cmds []*ledgerv1.Command) {
	t.Helper()
	for i, c := range cmds {
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		res := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: b}).(Result)
		if res.Err != nil {
			t.Fatalf("command %d (%T): %v", i, c.GetOp(), res.Err)
		}
	}
}

func TestApplyEveryCommand(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, everyCommand())
	l := f.Ledger()

	if _, ok := l.Cluster("clusters/c2"); ok {
		t.Error("clusters/c2 survived its delete")
	}
	if h, _ := l.Host("hosts/h1"); !h.GetConnected() || h.GetCreateTime().AsTime() != t0.Add(3*time.Second) {
		t.Errorf("hosts/h1 = %v", h)
	}
	if h, _ := l.Host("hosts/h1"); !h.GetMaintenance() {
		t.Errorf("hosts/h1 left maintenance when its agent said hello again: %v", h)
	}
	if h, _ := l.Host("hosts/h1"); len(h.GetPendingCleanups()) != 1 || h.GetPendingCleanups()[0].GetJob() != "migrationJobs/old" ||
		h.GetPendingCleanups()[0].GetTarget().GetVmName() != "old" || !h.GetPendingCleanups()[0].GetCreateTime().AsTime().After(t0) {
		t.Errorf("pending cleanups of hosts/h1 = %v; want old's alone, stamped", h.GetPendingCleanups())
	}
	if rec, ok := l.RequestRecord("r-maint", t0); !ok || ledger.SameRequest(rec, "SetHostMaintenance", "hosts/h1") != nil {
		t.Errorf("request r-maint = %v", rec)
	}
	if h, _ := l.Host("hosts/h2"); !h.GetConnected() {
		t.Errorf("batched commands not applied: %v", h)
	}
	if ms, _ := l.MigrationServer("migrationServers/ms1"); ms.GetDownstreamBitsPerSecond() != 64_000_000 || ms.GetUpstreamBandwidth() != "" {
		t.Errorf("bandwidth = %v", ms)
	}
	if _, ok := l.MigrationServer("migrationServers/ms2"); ok {
		t.Error("ms2 survived its delete")
	}
	if c, _ := l.Credential("credentials/k1"); c.GetCredential().GetSecret() != "" || !bytes.Equal(c.GetSealedSecret(), []byte{1, 2, 3}) {
		t.Errorf("credential = %v", c)
	}
	if s, _ := l.Source("sources/kvm1"); s.GetKvm().GetObservedHostKey() != "ssh-ed25519 AAAA" {
		t.Errorf("host key not recorded: %v", s)
	}
	checkSynced(t, l)
	if _, ok := l.Job("migrationJobs/j1"); ok {
		t.Error("j1 survived its delete")
	}
	// j1 succeeded: its VM keeps 10.0.0.10, reserved when the job was
	// deleted; j4's reservation was released.
	n1, _ := l.L3Network("l3Networks/n1")
	if rs := n1.GetReservations(); len(rs) != 1 || rs[0].GetIp() != "10.0.0.10" || rs[0].GetVmName() != "t-migrationJobs/j1" || rs[0].GetJob() != "migrationJobs/j1" ||
		rs[0].GetMac() != "" || !rs[0].GetCreateTime().AsTime().After(t0) {
		t.Errorf("reservations of n1 = %v", rs)
	}
	if held := l.UsedAddresses("l3Networks/n1"); held["10.0.0.10"] == "" || held["10.0.0.13"] != "" {
		t.Errorf("used addresses of n1 = %v; want 10.0.0.10 held by the reservation, 10.0.0.13 free", held)
	}
	j2, _ := l.Job("migrationJobs/j2")
	if j2.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED || j2.GetEpoch() != 1 || j2.GetAttempt() != 1 || j2.GetReason() != "" {
		t.Errorf("restarted j2 = %v", j2)
	}
	j3, _ := l.Job("migrationJobs/j3")
	if j3.GetWaitingReason() != "job parallelism 10 reached" {
		t.Errorf("j3 waiting reason = %q", j3.GetWaitingReason())
	}
	if s := l.Settings(); s.GetJobParallelism() != 4 || s.GetName() != ledger.SettingsName {
		t.Errorf("settings = %v", s)
	}
	if n := l.Nodes(); len(n) != 1 || n[0].GetApiAddress() != "127.0.0.1:7443" {
		t.Errorf("nodes = %v", n)
	}
	g1, _ := l.NetworkMappingGroup("networkMappingGroups/g1")
	if g1.GetDisplayName() != "lab" || len(g1.GetMappings()) != 1 || g1.GetMappings()[0].GetSourceNetwork() != "br-lab" ||
		!g1.GetCreateTime().AsTime().Before(g1.GetUpdateTime().AsTime()) {
		t.Errorf("updated mapping group = %v", g1)
	}
	if _, ok := l.NetworkMappingGroup("networkMappingGroups/g2"); ok {
		t.Error("g2 survived its delete")
	}
	if names, ok := l.Request("r-jobs"); !ok || len(names) != 3 {
		t.Errorf("request r-jobs = %v", names)
	}
	if f.AppliedIndex() != uint64(len(everyCommand())) {
		t.Errorf("applied index %d", f.AppliedIndex())
	}
}

// checkSynced checks what the two RecordSourceSync commands of
// everyCommand left: the inventory of the first (stamped with its time),
// the error of the second.
func checkSynced(t *testing.T, l *ledger.Ledger) {
	t.Helper()
	src, _ := l.Source("sources/kvm1")
	inv, ok := l.SourceInventory("sources/kvm1")
	if !ok || inv.GetSource() != "sources/kvm1" || len(inv.GetVms()) != 1 || inv.GetVms()[0].GetCpus() != 2 ||
		inv.GetHosts()[0].GetVersion() != "9.0.0" {
		t.Fatalf("inventory = %v", inv)
	}
	if !inv.GetSyncTime().AsTime().Equal(src.GetLastSyncTime().AsTime()) || !src.GetLastSyncAttemptTime().AsTime().After(src.GetLastSyncTime().AsTime()) {
		t.Errorf("sync %v, source last sync %v, attempt %v", inv.GetSyncTime().AsTime(), src.GetLastSyncTime().AsTime(), src.GetLastSyncAttemptTime().AsTime())
	}
	if src.GetLastSyncError() != "ssh: connection refused" || src.GetProduct().GetVersion() != "9.0.0" {
		t.Errorf("source after a failed sync = %v", src)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, everyCommand())
	want := f.Ledger().Snapshot()

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := New(ledger.New(), nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got := g.Ledger().Snapshot(); !proto.Equal(got, want) {
		t.Fatalf("restored ledger differs:\n got %v\nwant %v", got, want)
	}
	if g.Restores() != 1 {
		t.Errorf("restores = %d", g.Restores())
	}
	// Restore replaces: state the target had before is gone.
	h := New(ledger.New(), nil)
	applyAll(t, h, everyCommand()[:1])
	if err := h.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(h.Ledger().Snapshot(), want) {
		t.Fatal("restore over existing state did not replace it")
	}
}

func TestApplyIsDeterministic(t *testing.T) {
	a, b := New(ledger.New(), nil), New(ledger.New(), nil)
	applyAll(t, a, everyCommand())
	applyAll(t, b, everyCommand())
	if !proto.Equal(a.Ledger().Snapshot(), b.Ledger().Snapshot()) {
		t.Fatal("two FSMs applying the same log differ")
	}
}

func TestRefusals(t *testing.T) {
	cmds := everyCommand()
	tests := []struct {
		name string
		cmd  *ledgerv1.Command
		want error
	}{
		{"stale epoch result", &ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{Name: "migrationJobs/j2", Epoch: 1, State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED}}}, ledger.ErrStaleEpoch},
		{"delete queued job", &ledgerv1.Command{Op: &ledgerv1.Command_DeleteMigrationJob{DeleteMigrationJob: &ledgerv1.DeleteResource{Name: "migrationJobs/j3"}}}, ledger.ErrFailedPrecondition},
		{"restart queued job", &ledgerv1.Command{Op: &ledgerv1.Command_RestartMigrationJob{RestartMigrationJob: &ledgerv1.RestartMigrationJob{Name: "migrationJobs/j3"}}}, ledger.ErrFailedPrecondition},
		{"address in use", &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{job("migrationJobs/j9", "10.0.0.12")}}}}, ledger.ErrFailedPrecondition},
		{"second role on host", &ledgerv1.Command{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/x", Host: "hosts/h1", Type: ferryv1.Platform_PLATFORM_VMWARE}}}}, ledger.ErrFailedPrecondition},
		{"changed host key", &ledgerv1.Command{Op: &ledgerv1.Command_RecordSourceHostKey{RecordSourceHostKey: &ledgerv1.RecordSourceHostKey{Name: "sources/kvm1", HostKey: "ssh-ed25519 BBBB"}}}, ledger.ErrFailedPrecondition},
		{"credential in use", &ledgerv1.Command{Op: &ledgerv1.Command_DeleteCredential{DeleteCredential: &ledgerv1.DeleteResource{Name: "credentials/k1"}}}, ledger.ErrFailedPrecondition},
		{"duplicate cluster", &ledgerv1.Command{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}}}, ledger.ErrExists},
		{"missing job", &ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: "migrationJobs/nope"}}}, ledger.ErrNotFound},
		{"sync of a missing source", &ledgerv1.Command{Op: &ledgerv1.Command_RecordSourceSync{RecordSourceSync: &ledgerv1.RecordSourceSync{Source: "sources/nope"}}}, ledger.ErrNotFound},
		{"source of a mapping group", &ledgerv1.Command{Op: &ledgerv1.Command_DeleteSource{DeleteSource: &ledgerv1.DeleteResource{Name: "sources/kvm1"}}}, ledger.ErrFailedPrecondition},
		{"L3 network of a mapping group", &ledgerv1.Command{Op: &ledgerv1.Command_DeleteL3Network{DeleteL3Network: &ledgerv1.DeleteResource{Name: "l3Networks/n1"}}}, ledger.ErrFailedPrecondition},
		{"mapping to a missing L3 network", &ledgerv1.Command{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{NetworkMappingGroup: &ferryv1.NetworkMappingGroup{
			Name: "networkMappingGroups/g9", Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "x", L3Network: "l3Networks/n2"}}}}}}, ledger.ErrNotFound},
		{"update of a missing group", &ledgerv1.Command{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{Update: true, NetworkMappingGroup: &ferryv1.NetworkMappingGroup{
			Name: "networkMappingGroups/g9", Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "x", L3Network: "l3Networks/n1"}}}}}}, ledger.ErrNotFound},
		{"duplicate mapping group", &ledgerv1.Command{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{NetworkMappingGroup: &ferryv1.NetworkMappingGroup{
			Name: "networkMappingGroups/g1", Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "x", L3Network: "l3Networks/n1"}}}}}}, ledger.ErrExists},
		{"cleanup on a missing host", &ledgerv1.Command{Op: &ledgerv1.Command_SetPendingCleanup{SetPendingCleanup: &ledgerv1.SetPendingCleanup{Host: "hosts/nope", Job: "migrationJobs/j1"}}}, ledger.ErrNotFound},
		{"maintenance of a missing host", &ledgerv1.Command{Op: &ledgerv1.Command_SetHostMaintenance{SetHostMaintenance: &ledgerv1.SetHostMaintenance{Name: "hosts/nope", Maintenance: true}}}, ledger.ErrNotFound},
		{"update of a missing network", &ledgerv1.Command{Op: &ledgerv1.Command_UpdateResource{UpdateResource: &ledgerv1.UpdateResource{
			Resource: &ledgerv1.UpdateResource_L3Network{L3Network: &ferryv1.L3Network{Name: "l3Networks/nope"}}, Paths: []string{"description"}}}}, ledger.ErrNotFound},
		{"unknown command", &ledgerv1.Command{}, ErrUnknownCommand},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New(ledger.New(), nil)
			applyAll(t, f, cmds)
			before := f.Ledger().Snapshot()
			_, err := f.ApplyCommand(cmdAt(100, tt.cmd))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !proto.Equal(before, f.Ledger().Snapshot()) {
				t.Error("a refused command changed the ledger")
			}
		})
	}
}

func TestRepeatedRequestIDReturnsFirstAnswer(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, everyCommand())
	again := cmdAt(200, &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
		RequestId: "r-jobs", Jobs: []*ferryv1.MigrationJob{job("migrationJobs/j7", "")}}}})
	names, err := f.ApplyCommand(again)
	if err != nil || len(names) != 3 || names[0] != "migrationJobs/j1" {
		t.Fatalf("names = %v, err = %v", names, err)
	}
	if _, ok := f.Ledger().Job("migrationJobs/j7"); ok {
		t.Fatal("repeated request created a job")
	}
}

// TestHostMaintenanceReplay: a repeated request_id changes nothing, so
// an old "on" replayed after an "off" does not put the host back.
func TestHostMaintenanceReplay(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, everyCommand())
	stamp := func(id string) *ledgerv1.RequestStamp {
		return &ledgerv1.RequestStamp{RequestId: id, Method: "SetHostMaintenance", Target: "hosts/h1"}
	}
	off := cmdAt(200, &ledgerv1.Command{Request: stamp("r-off"), Op: &ledgerv1.Command_SetHostMaintenance{SetHostMaintenance: &ledgerv1.SetHostMaintenance{Name: "hosts/h1"}}})
	if names, err := f.ApplyCommand(off); err != nil || len(names) != 1 || names[0] != "hosts/h1" {
		t.Fatalf("off: names = %v, err = %v", names, err)
	}
	again := cmdAt(201, &ledgerv1.Command{Request: stamp("r-maint"), Op: &ledgerv1.Command_SetHostMaintenance{SetHostMaintenance: &ledgerv1.SetHostMaintenance{Name: "hosts/h1", Maintenance: true}}})
	if _, err := f.ApplyCommand(again); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if h, _ := f.Ledger().Host("hosts/h1"); h.GetMaintenance() {
		t.Fatalf("a replayed request put the host back into maintenance: %v", h)
	}
}

func TestDeleteServerCancelsItsJobs(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, everyCommand())
	names, err := f.ApplyCommand(cmdAt(300, &ledgerv1.Command{Op: &ledgerv1.Command_DeleteMigrationServer{DeleteMigrationServer: &ledgerv1.DeleteResource{Name: "migrationServers/ms1"}}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 2 {
		t.Fatalf("cancelled %v, want j2 and j3", names)
	}
	for _, n := range names {
		j, _ := f.Ledger().Job(n)
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED || j.GetReason() == "" {
			t.Errorf("%s = %v", n, j)
		}
	}
}

type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }

// TestJobVerified: a job is verified when it succeeded and the agent
// reported every disk it keeps as read back and matched.
func TestJobVerified(t *testing.T) {
	two := func(name, ip string) *ferryv1.MigrationJob {
		j := job(name, ip)
		j.Target.Disks = append(j.Target.Disks, &ferryv1.TargetDisk{SourceDisk: "vdb", SizeBytes: 1 << 30})
		return j
	}
	disks := func(vda, vdb bool) []*ferryv1.DiskProgress {
		return []*ferryv1.DiskProgress{{SourceDisk: "vda", Verified: vda}, {SourceDisk: "vdb", Verified: vdb}}
	}
	succeeded, failed := ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED
	for _, tc := range []struct {
		name  string
		state ferryv1.MigrationJobState
		disks []*ferryv1.DiskProgress
		want  bool
	}{
		{"every disk verified", succeeded, disks(true, true), true},
		{"one disk unverified", succeeded, disks(true, false), false},
		{"a disk not reported", succeeded, disks(true, true)[:1], false},
		{"failed", failed, disks(true, true), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := New(ledger.New(), nil)
			applyAll(t, f, inventoryCommands()) // the inventory, before the first jobs
			applyAll(t, f, []*ledgerv1.Command{
				cmdAt(100, &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
					Jobs: []*ferryv1.MigrationJob{two("migrationJobs/v", "10.0.0.15")}}}}),
				cmdAt(101, &ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/v", Host: "hosts/h1", Epoch: 1}}}),
				cmdAt(102, &ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{
					Name: "migrationJobs/v", Epoch: 1, State: tc.state, Disks: tc.disks}}}),
			})
			j, _ := f.Ledger().Job("migrationJobs/v")
			if j.GetVerified() != tc.want {
				t.Fatalf("verified = %v, want %v (%v)", j.GetVerified(), tc.want, j)
			}
		})
	}
}

// TestJobBootVerified: boot_verified is recorded from the agent's result
// only for a job that succeeded and asked verify_boot, from the current
// epoch; a stale epoch's result is refused.
func TestJobBootVerified(t *testing.T) {
	succeeded, failed := ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED
	const by = "serial console: FERRY BOOTED FROM vdb"
	for _, tc := range []struct {
		name       string
		verifyBoot bool
		state      ferryv1.MigrationJobState
		epoch      int64
		wantBy     string
		wantErr    error
	}{
		{"succeeded with verify_boot", true, succeeded, 1, by, nil},
		{"without verify_boot", false, succeeded, 1, "", nil},
		{"failed", true, failed, 1, "", nil},
		{"stale epoch", true, succeeded, 0, "", ledger.ErrStaleEpoch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := New(ledger.New(), nil)
			applyAll(t, f, inventoryCommands())
			j := job("migrationJobs/b", "10.0.0.16")
			j.Options = &ferryv1.MigrationOptions{VerifyBoot: tc.verifyBoot}
			applyAll(t, f, []*ledgerv1.Command{
				cmdAt(100, &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
					Jobs: []*ferryv1.MigrationJob{j}}}}),
				cmdAt(101, &ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/b", Host: "hosts/h1", Epoch: 1}}}),
			})
			err := f.Ledger().FinishMigrationJob(&ledgerv1.FinishMigrationJob{
				Name: "migrationJobs/b", Epoch: tc.epoch, State: tc.state, BootVerifiedBy: by}, time.Unix(102, 0))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("finish: %v, want %v", err, tc.wantErr)
			}
			got, _ := f.Ledger().Job("migrationJobs/b")
			if got.GetBootVerified() != (tc.wantBy != "") || got.GetBootVerifiedBy() != tc.wantBy {
				t.Fatalf("boot_verified %v by %q, want by %q", got.GetBootVerified(), got.GetBootVerifiedBy(), tc.wantBy)
			}
		})
	}
}

// TestUnappliableEntryStopsTheNode: an entry the FSM cannot decode, or a
// command it has no case for (as a newer leader would write), panics
// instead of being skipped, so no replica silently diverges.
func TestUnappliableEntryStopsTheNode(t *testing.T) {
	// Field 999 of Command: a case this version does not know.
	newer := protowire.AppendTag(nil, 999, protowire.BytesType)
	newer = protowire.AppendBytes(newer, []byte{0x0a, 0x01, 'x'})
	for name, data := range map[string][]byte{
		"undecodable":   {0xff, 0xff, 0xff},
		"unknown op":    newer,
		"no op at all":  nil,
		"unknown batch": batchOf(t, newer),
	} {
		t.Run(name, func(t *testing.T) {
			f := New(ledger.New(), nil)
			before := f.Ledger().Snapshot()
			defer func() {
				if recover() == nil {
					t.Error("Apply did not stop the node")
				}
				if f.AppliedIndex() != 0 {
					t.Errorf("applied index moved to %d", f.AppliedIndex())
				}
				if !proto.Equal(before, f.Ledger().Snapshot()) {
					t.Error("the ledger changed")
				}
			}()
			f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: data})
		})
	}
}

func batchOf(t *testing.T, inner []byte) []byte {
	var c ledgerv1.Command
	if err := proto.Unmarshal(inner, &c); err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(&ledgerv1.Command{Op: &ledgerv1.Command_Batch{Batch: &ledgerv1.Batch{Commands: []*ledgerv1.Command{&c}}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRestartPlacesAgain: a restart command that names a host moves the job
// there with the leader's reason, on every replica and through a snapshot;
// one that names none (a command written before restarts placed jobs, or a
// job whose spec names target.host) keeps the job's host.
func TestRestartPlacesAgain(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, everyCommand())
	const reason = "chosen again at restart: allocation strategy fewest_vms: hosts/h2 (0 VMs: 0 running, 0 of queued and running jobs)"
	check := func(f *FSM, host, why string) {
		t.Helper()
		j, _ := f.Ledger().Job("migrationJobs/j2")
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED || j.GetTargetHost() != host || j.GetPlacementReason() != why {
			t.Fatalf("j2 = %v %s (%q), want QUEUED on %s (%q)", j.GetState(), j.GetTargetHost(), j.GetPlacementReason(), host, why)
		}
	}
	check(f, "hosts/h2", reason)
	check(restored(t, f), "hosts/h2", reason)
	if _, err := f.ApplyCommand(cmdAt(300, &ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: "migrationJobs/j2"}}})); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ApplyCommand(cmdAt(301, &ledgerv1.Command{Op: &ledgerv1.Command_RestartMigrationJob{RestartMigrationJob: &ledgerv1.RestartMigrationJob{Name: "migrationJobs/j2"}}})); err != nil {
		t.Fatal(err)
	}
	check(f, "hosts/h2", reason)
	// A refused restart (the job is queued) changes nothing, host included.
	_, err := f.ApplyCommand(cmdAt(302, &ledgerv1.Command{Op: &ledgerv1.Command_RestartMigrationJob{RestartMigrationJob: &ledgerv1.RestartMigrationJob{Name: "migrationJobs/j2", TargetHost: "hosts/h1", PlacementReason: "x"}}}))
	if !errors.Is(err, ledger.ErrFailedPrecondition) {
		t.Fatalf("restart of a queued job: %v", err)
	}
	check(f, "hosts/h2", reason)
}

// TestAppliedIndex: every Result carries its entry's index; WaitApplied
// waits for the index; a snapshot carries it, and a node restored from the
// snapshot knows which state it serves.
func TestAppliedIndex(t *testing.T) {
	f := New(ledger.New(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmds := everyCommand()
	waited := make(chan error, 1)
	go func() { waited <- f.WaitApplied(ctx, uint64(len(cmds))) }()
	for i, c := range cmds {
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		res := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: b}).(Result)
		if res.Index != uint64(i+1) {
			t.Fatalf("Result.Index of entry %d = %d", i+1, res.Index)
		}
	}
	if err := <-waited; err != nil || f.AppliedIndex() != uint64(len(cmds)) {
		t.Fatalf("WaitApplied = %v, applied %d; want nil, %d", err, f.AppliedIndex(), len(cmds))
	}
	short, cancelShort := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancelShort()
	if err := f.WaitApplied(short, uint64(len(cmds))+1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitApplied past the applied index = %v, want DeadlineExceeded", err)
	}
	g := restored(t, f)
	if g.AppliedIndex() != uint64(len(cmds)) {
		t.Fatalf("applied index after restore = %d, want the snapshot's %d", g.AppliedIndex(), len(cmds))
	}
}

// TestJobGuestInspection: the guest inspection is recorded from a result
// that succeeded only, and cleared by a restart, which may replace
// options.guest_conversion and otherwise keeps it.
func TestJobGuestInspection(t *testing.T) {
	in := &ferryv1.GuestInspection{OsType: "linux", Distribution: "debian", Version: "12.15", Firmware: "bios",
		Changes: []string{"removed package open-vm-tools"}}
	f := New(ledger.New(), nil)
	applyAll(t, f, inventoryCommands())
	j := job("migrationJobs/g", "10.0.0.17")
	applyAll(t, f, []*ledgerv1.Command{
		cmdAt(100, &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
			Jobs: []*ferryv1.MigrationJob{j}}}}),
		cmdAt(101, &ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/g", Host: "hosts/h1", Epoch: 1}}}),
	})
	l := f.Ledger()
	if err := l.FinishMigrationJob(&ledgerv1.FinishMigrationJob{Name: "migrationJobs/g", Epoch: 1,
		State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, Reason: "convert the guest: …", GuestInspection: in}, time.Unix(102, 0)); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Job("migrationJobs/g"); got.GetGuestInspection() != nil {
		t.Fatalf("a failed job recorded the inspection %v", got.GetGuestInspection())
	}
	if err := l.RestartMigrationJob(&ledgerv1.RestartMigrationJob{Name: "migrationJobs/g",
		GuestConversion: ferryv1.GuestConversion_GUEST_CONVERSION_OFF}, time.Unix(103, 0)); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Job("migrationJobs/g"); got.GetOptions().GetGuestConversion() != ferryv1.GuestConversion_GUEST_CONVERSION_OFF {
		t.Fatalf("restart with guest_conversion OFF left %s", got.GetOptions().GetGuestConversion())
	}
	if err := l.StartMigrationJob(&ledgerv1.StartMigrationJob{Name: "migrationJobs/g", Host: "hosts/h1", Epoch: 2}, time.Unix(104, 0)); err != nil {
		t.Fatal(err)
	}
	if err := l.FinishMigrationJob(&ledgerv1.FinishMigrationJob{Name: "migrationJobs/g", Epoch: 2,
		State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED, GuestInspection: in}, time.Unix(105, 0)); err != nil {
		t.Fatal(err)
	}
	got, _ := l.Job("migrationJobs/g")
	if !proto.Equal(got.GetGuestInspection(), in) {
		t.Fatalf("guest inspection %v, want %v", got.GetGuestInspection(), in)
	}
	if err := l.RestartMigrationJob(&ledgerv1.RestartMigrationJob{Name: "migrationJobs/g"}, time.Unix(106, 0)); err == nil {
		t.Fatal("a succeeded job restarted")
	}
}
