package session

import (
	"crypto/ed25519"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// seedExport creates a queued export job of sources/kvm1's vm1.
func (f *fixture) seedExport(name string) string {
	f.t.Helper()
	f.seedJob("hosts/h1", 1) // the server, source and credential
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{{
		Name: name, Source: "sources/kvm1", SourceVm: "vm1", MigrationServer: "migrationServers/ms",
		Target: &ferryv1.TargetVm{VmName: "vm1", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 1}}},
		Export: &ferryv1.ExportSpec{BundleName: "vm1", Destination: &ferryv1.ExportDestination{
			Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY, Path: "/srv/exports"}},
	}}}}})
	return name
}

func manifestOf(t *testing.T, job, source, vm string) []byte {
	t.Helper()
	return manifestWith(t, job, source, vm, `{"id":"vm1","name":"vm1","cpus":2}`)
}

func manifestWith(t *testing.T, job, source, vm, vmJSON string) []byte {
	t.Helper()
	b, err := bundle.Marshal(&bundle.Manifest{FerryVersion: "test", Job: job, Source: bundle.Source{Name: source, Type: "PLATFORM_KVM", VM: vm},
		VM: json.RawMessage(vmJSON), Target: json.RawMessage(`{"vmName":"vm1"}`)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSignBundle: the leader signs an export's manifest only for the
// export running under that epoch on the asking host, and only a manifest
// naming that job, its source and its source VM; every refusal says why.
// The signature is the cluster key's, recorded sealed in the ledger.
func TestSignBundle(t *testing.T) {
	f := newFixture(t, Config{}, true)
	exp := f.seedExport("migrationJobs/exp")
	f.start(exp, "hosts/h1", 3)
	other := f.seedExport("migrationJobs/exp-h2")
	f.start(other, "hosts/h2", 1)
	migration := f.seedJob("hosts/h1", 1)
	f.start(migration, "hosts/h1", 1)
	done := f.seedExport("migrationJobs/exp-done")
	f.start(done, "hosts/h1", 1)
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{
		Name: done, Epoch: 1, State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED, Reason: "cancelled"}}})
	a := f.connect(hello("h1", &agentv1.HeldJob{Job: exp, Epoch: 3}, &agentv1.HeldJob{Job: migration, Epoch: 1}))
	a.next() // welcome

	good := manifestOf(t, exp, "sources/kvm1", "vm1")
	for _, tc := range []struct {
		name     string
		job      string
		epoch    int64
		manifest []byte
		reason   string // empty: signed
	}{
		{"the export's current assignment", exp, 3, good, ""},
		{"a stale epoch", exp, 2, good, "assignment superseded: job runs under epoch 3 on hosts/h1"},
		{"another host's export", other, 1, manifestOf(t, other, "sources/kvm1", "vm1"), "assignment superseded: job runs under epoch 1 on hosts/h2"},
		{"a migration job", migration, 1, manifestOf(t, migration, "sources/kvm1", "vm1"), "job " + migration + " is not an export: only an export's bundle is signed"},
		{"a finished export", done, 1, manifestOf(t, done, "sources/kvm1", "vm1"), "job is MIGRATION_JOB_STATE_CANCELLED"},
		{"an unknown job", "migrationJobs/gone", 1, good, "job no longer exists"},
		{"a manifest naming another job", exp, 3, manifestOf(t, other, "sources/kvm1", "vm1"), `manifest job is "migrationJobs/exp-h2", not migrationJobs/exp`},
		{"a manifest naming another source", exp, 3, manifestOf(t, exp, "sources/other", "vm1"), `manifest source.name is "sources/other", not the job's source sources/kvm1`},
		{"a manifest naming another VM", exp, 3, manifestOf(t, exp, "sources/kvm1", "vm2"), `manifest source.vm is "vm2", not the job's source VM "vm1"`},
		{"a manifest describing another VM", exp, 3, manifestWith(t, exp, "sources/kvm1", "vm1", `{"id":"vm2","name":"db"}`), `manifest vm is "db" (id "vm2"), not the job's source VM "vm1"`},
		{"a manifest with an empty VM", exp, 3, manifestWith(t, exp, "sources/kvm1", "vm1", `{}`), `manifest vm is "" (id ""), not the job's source VM "vm1"`},
		{"not a manifest", exp, 3, []byte(`{"format":"ferry-bundle/1","job":"migrationJobs/exp","extra":1}`), `manifest: json: unknown field "extra"`},
		{"another format", exp, 3, []byte(`{"format":"other/2"}`), `manifest format "other/2", want "ferry-bundle/1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_SignBundle{SignBundle: &agentv1.SignBundle{
				RequestId: "r-" + tc.name, Job: tc.job, Epoch: tc.epoch, Manifest: tc.manifest}}})
			msg := a.next()
			for msg.GetBundleSignature() == nil { // a cancellation from the hello's reconciliation, say
				msg = a.next()
			}
			ans := msg.GetBundleSignature()
			if ans.GetRequestId() != "r-"+tc.name {
				t.Fatalf("answer %v to request r-%s", ans, tc.name)
			}
			if tc.reason != "" {
				if ans.GetError() != tc.reason || len(ans.GetSignature()) != 0 {
					t.Fatalf("answer = %v, want refused: %q", ans, tc.reason)
				}
				return
			}
			if ans.GetError() != "" {
				t.Fatalf("refused: %s", ans.GetError())
			}
			k, ok := f.ledger.BundleSigningKey()
			if !ok {
				t.Fatal("signed without a recorded key")
			}
			pub := ed25519.PublicKey(k.GetPublicKey())
			if !pub.Equal(ed25519.PublicKey(ans.GetPublicKey())) || ans.GetKeyId() != bundle.KeyID(pub) {
				t.Fatalf("signed by %x (%s), the cluster's key is %x", ans.GetPublicKey(), ans.GetKeyId(), []byte(pub))
			}
			file, err := bundle.Assemble(tc.manifest, pub, ans.GetSignature())
			if err != nil {
				t.Fatal(err)
			}
			m, _, err := bundle.Decode(file, pub)
			if err != nil || m.Job != exp {
				t.Fatalf("the signed bundle reads as %v, %v", m, err)
			}
		})
	}
}

// TestLeaderMakesBundleKey: a leader makes the cluster's key when it
// takes the lead, once, sealed; a follower never does.
func TestLeaderMakesBundleKey(t *testing.T) {
	follower := newFixture(t, Config{}, false)
	time.Sleep(100 * time.Millisecond)
	if _, ok := follower.ledger.BundleSigningKey(); ok {
		t.Fatal("a follower made the key")
	}
	f := newFixture(t, Config{}, true)
	deadline := time.Now().Add(5 * time.Second)
	k, ok := f.ledger.BundleSigningKey()
	for ; !ok && time.Now().Before(deadline); k, ok = f.ledger.BundleSigningKey() {
		time.Sleep(10 * time.Millisecond)
	}
	if !ok {
		t.Fatal("the leader made no key")
	}
	seed, err := f.sealer.Open(k.GetSealedPrivateKey(), []byte(ledger.BundleKeyAAD))
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey).Equal(ed25519.PublicKey(k.GetPublicKey())) {
		t.Error("the sealed seed is not the public key's")
	}
	if strings.Contains(string(k.GetSealedPrivateKey()), string(seed)) {
		t.Error("the seed is stored in the clear")
	}
	if _, err := f.sealer.Open(k.GetSealedPrivateKey(), []byte("credentials/pw")); err == nil {
		t.Error("the sealed key opens as a credential's secret")
	}
	if err := f.mgr.makeBundleKey(t.Context()); err != nil {
		t.Fatal(err)
	}
	if again, _ := f.ledger.BundleSigningKey(); !ed25519.PublicKey(again.GetPublicKey()).Equal(ed25519.PublicKey(k.GetPublicKey())) {
		t.Error("the key changed")
	}
}
