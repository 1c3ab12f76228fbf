package api

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func exportReq(edit func(*ferryv1.CreateExportJobsRequest)) *ferryv1.CreateExportJobsRequest {
	req := &ferryv1.CreateExportJobsRequest{Source: "sources/kvm", MigrationServer: "migrationServers/kvm",
		Jobs: []*ferryv1.ExportJobSpec{{SourceVm: "vm-0", Export: &ferryv1.ExportSpec{
			Destination: &ferryv1.ExportDestination{Path: "/srv/exports"}, Format: ferryv1.ExportFormat_EXPORT_FORMAT_VMDK}}}}
	if edit != nil {
		edit(req)
	}
	return req
}

// TestCreateExportJobs: a batch is checked field by field, its VMs read
// from the synced inventory, and each job holds every disk, the export
// with its defaults filled, and no target placement. Neither the batch
// nor GetBundleSigningKey makes the cluster's key (the leader does); a
// recorded key is answered as its public half alone.
func TestCreateExportJobs(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	e.kvmInventory("9.0.0", "7.2.0", kvmVM())
	for _, tc := range []struct {
		name   string
		edit   func(*ferryv1.CreateExportJobsRequest)
		code   codes.Code
		prefix string
	}{
		{"relative directory", func(r *ferryv1.CreateExportJobsRequest) { r.Jobs[0].Export.Destination.Path = "exports" }, codes.InvalidArgument, "jobs[0].export.destination.path:"},
		{"no export", func(r *ferryv1.CreateExportJobsRequest) { r.Jobs[0].Export = nil }, codes.InvalidArgument, "jobs[0].export:"},
		{"compressed vmdk", func(r *ferryv1.CreateExportJobsRequest) { r.Jobs[0].Export.Compress = true }, codes.InvalidArgument, "jobs[0].export.compress:"},
		{"bundle name with a slash", func(r *ferryv1.CreateExportJobsRequest) { r.Jobs[0].Export.BundleName = "a/b" }, codes.InvalidArgument, "jobs[0].export.bundle_name:"},
		{"smb without user", func(r *ferryv1.CreateExportJobsRequest) {
			r.Jobs[0].Export.Destination = &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_SMB, Share: "//nas/x", Credential: "credentials/pw"}
		}, codes.InvalidArgument, "jobs[0].export.destination.user:"},
		{"nfs share", func(r *ferryv1.CreateExportJobsRequest) {
			r.Jobs[0].Export.Destination = &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_NFS, Share: "filer"}
		}, codes.InvalidArgument, "jobs[0].export.destination.share:"},
		{"auto start", func(r *ferryv1.CreateExportJobsRequest) {
			yes := true
			r.Jobs[0].Options = &ferryv1.MigrationOptions{AutoStart: &yes}
		}, codes.InvalidArgument, "jobs[0].options:"},
		{"unknown source", func(r *ferryv1.CreateExportJobsRequest) { r.Source = "sources/nope" }, codes.NotFound, "source:"},
		{"unknown smb credential", func(r *ferryv1.CreateExportJobsRequest) {
			r.Jobs[0].Export.Destination = &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_SMB, Share: "//nas/x", User: "u", Credential: "credentials/nope"}
		}, codes.NotFound, "jobs[0].export.destination.credential:"},
		{"server of another type", func(r *ferryv1.CreateExportJobsRequest) { r.MigrationServer = "migrationServers/vmw" }, codes.FailedPrecondition, "migration_server:"},
		{"VM not synced", func(r *ferryv1.CreateExportJobsRequest) { r.Jobs[0].SourceVm = "vm-9" }, codes.FailedPrecondition, "jobs[0].source_vm:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.jobs.CreateExportJobs(ctx(t), exportReq(tc.edit))
			wantCode(t, err, tc.code, tc.prefix)
		})
	}
	if _, ok := e.ledger.BundleSigningKey(); ok {
		t.Fatal("a refused batch made the signing key")
	}

	resp := must[*ferryv1.CreateExportJobsResponse](t)(e.jobs.CreateExportJobs(ctx(t), exportReq(nil)))
	j := resp.GetJobs()[0]
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED || j.GetTargetHost() != "" || j.GetTarget().GetCluster() != "" ||
		len(j.GetTarget().GetDisks()) != 2 || j.GetTarget().GetDisks()[1].GetSizeBytes() != gib {
		t.Errorf("export job = %v", j)
	}
	x := j.GetExport()
	if x.GetBundleName() != "vm-0" || x.GetDestination().GetType() != ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY {
		t.Errorf("export = %v; want bundle vm-0 in a directory", x)
	}

	// A viewer's read never makes the key: the leader does (package
	// session), and the API answers its public half alone.
	_, err := e.jobs.GetBundleSigningKey(ctx(t), &ferryv1.GetBundleSigningKeyRequest{})
	wantCode(t, err, codes.NotFound, "bundleSigningKey not found")
	if _, ok := e.ledger.BundleSigningKey(); ok {
		t.Fatal("CreateExportJobs or GetBundleSigningKey made the signing key")
	}
	pub, priv, _ := ed25519.GenerateKey(nil)
	sealed, err := e.sealer.Seal(priv.Seed(), []byte(ledger.BundleKeyAAD))
	if err != nil {
		t.Fatal(err)
	}
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_SetBundleSigningKey{SetBundleSigningKey: &ledgerv1.SetBundleSigningKey{
		SealedPrivateKey: sealed, PublicKey: pub}}})
	key := must[*ferryv1.BundleSigningKey](t)(e.jobs.GetBundleSigningKey(ctx(t), &ferryv1.GetBundleSigningKeyRequest{}))
	got, _ := base64.StdEncoding.DecodeString(key.GetPublicKey())
	if !bytes.Equal(got, pub) || key.GetName() != "bundleSigningKey" || key.GetKeyId() != bundle.KeyID(pub) {
		t.Fatalf("GetBundleSigningKey = %v, want the public key %x", key, []byte(pub))
	}
	// Cancelled, it restarts as it was: no placement, no target host.
	must[*ferryv1.CancelMigrationJobResponse](t)(e.jobs.CancelMigrationJob(ctx(t), &ferryv1.CancelMigrationJobRequest{Name: j.GetName()}))
	r := must[*ferryv1.RestartMigrationJobResponse](t)(e.jobs.RestartMigrationJob(ctx(t), &ferryv1.RestartMigrationJobRequest{Name: j.GetName()}))
	if r.GetJob().GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED || r.GetJob().GetTargetHost() != "" || r.GetJob().GetExport().GetBundleName() != "vm-0" {
		t.Errorf("restarted export = %v", r.GetJob())
	}
	// A second batch keeps the key.
	must[*ferryv1.CreateExportJobsResponse](t)(e.jobs.CreateExportJobs(ctx(t), exportReq(func(r *ferryv1.CreateExportJobsRequest) {
		r.Jobs[0].Export.BundleName = "again"
	})))
	if again, _ := e.ledger.BundleSigningKey(); !bytes.Equal(again.GetPublicKey(), pub) {
		t.Error("the key changed")
	}
}

// TestBundleSource: a bundle source's location is checked field by
// field; it cannot be exported from, and no migration server is of its
// type.
func TestBundleSource(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	for _, tc := range []struct {
		name   string
		b      *ferryv1.BundleLocation
		prefix string
	}{
		{"relative path", &ferryv1.BundleLocation{Path: "exports"}, "source.bundle.path:"},
		{"bad key", &ferryv1.BundleLocation{Path: "/srv/exports", PublicKey: "bm90IGEga2V5"}, "source.bundle.public_key:"},
		{"no location", nil, "source.bundle:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.sources.CreateSource(ctx(t), &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{Type: ferryv1.Platform_PLATFORM_BUNDLE, Bundle: tc.b}})
			wantCode(t, err, codes.InvalidArgument, tc.prefix)
		})
	}
	pub, _, _ := ed25519.GenerateKey(nil)
	src := must[*ferryv1.Source](t)(e.sources.CreateSource(ctx(t), &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Name: "sources/exports", Type: ferryv1.Platform_PLATFORM_BUNDLE,
		Bundle: &ferryv1.BundleLocation{Path: "/srv/exports", PublicKey: base64.StdEncoding.EncodeToString(pub)}}}))
	if src.GetBundle().GetPath() != "/srv/exports" {
		t.Errorf("source = %v", src)
	}
	_, err := e.jobs.CreateExportJobs(ctx(t), exportReq(func(r *ferryv1.CreateExportJobsRequest) { r.Source = src.GetName() }))
	wantCode(t, err, codes.FailedPrecondition, "source:")
	_, err = e.servers.CreateMigrationServer(ctx(t), &ferryv1.CreateMigrationServerRequest{MigrationServer: &ferryv1.MigrationServer{
		Host: "hosts/spare", Type: ferryv1.Platform_PLATFORM_BUNDLE, CachePath: "/var/cache/ferry"}})
	wantCode(t, err, codes.InvalidArgument, "migration_server.type:")
}
