package api

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestPreviewRefusesWindowsVirtioWithoutISO: a Windows guest converted
// (guest_conversion AUTO from VMware) onto virtio targets needs the
// migration server's virtio_win_iso: preview names the failed check and
// create refuses it; SATA/e1000 targets, guest_conversion OFF, or the ISO
// set on the server pass; a relative ISO path is refused naming the field.
func TestPreviewRefusesWindowsVirtioWithoutISO(t *testing.T) {
	e := mappingEnv(t, windowsSourceVM("vm-77", "10.0.0.7"))
	c := ctx(t)
	preview := func(edit func(*ferryv1.MigrationJobSpec)) []string {
		req := fillReq("vm-77", edit)
		resp, err := e.jobs.PreviewMigrationJobs(c, &ferryv1.PreviewMigrationJobsRequest{Source: req.GetSource(),
			MigrationServer: req.GetMigrationServer(), Jobs: req.GetJobs(), NetworkMappingGroup: req.GetNetworkMappingGroup()})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetFailedChecks()
	}
	virtio := func(s *ferryv1.MigrationJobSpec) { s.Target.OsType = ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO }
	const want = "jobs[0].options.guest_conversion: VM vm-77 is a Windows guest with virtio targets, whose drivers the conversion installs " +
		"from the migration server's virtio_win_iso, but migrationServers/vmw has none"
	if got := preview(virtio); len(got) != 1 || !strings.HasPrefix(got[0], want) {
		t.Errorf("preview of windows-virtio without an ISO: failed checks %q, want %q...", got, want)
	}
	_, err := e.jobs.CreateMigrationJobs(c, fillReq("vm-77", virtio))
	wantCode(t, err, codes.FailedPrecondition, "")
	if err == nil || !strings.Contains(err.Error(), "virtio_win_iso") {
		t.Errorf("create: %v, want the virtio_win_iso check", err)
	}
	if got := preview(nil); len(got) != 0 {
		t.Errorf("preview of windows on SATA/e1000: failed checks %q, want none", got)
	}
	if got := preview(func(s *ferryv1.MigrationJobSpec) {
		virtio(s)
		s.Options.GuestConversion = ferryv1.GuestConversion_GUEST_CONVERSION_OFF
	}); len(got) != 0 {
		t.Errorf("preview of windows-virtio without conversion: failed checks %q, want none", got)
	}

	update := func(iso string) error {
		_, err := e.servers.UpdateMigrationServer(c, &ferryv1.UpdateMigrationServerRequest{
			MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/vmw", VirtioWinIso: iso},
			UpdateMask:      &fieldmaskpb.FieldMask{Paths: []string{"virtio_win_iso"}}})
		return err
	}
	wantCode(t, update("virtio-win.iso"), codes.InvalidArgument, "migration_server.virtio_win_iso: \"virtio-win.iso\" is relative")
	if err := update("/usr/share/virtio-win/virtio-win.iso"); err != nil {
		t.Fatal(err)
	}
	if got := preview(virtio); len(got) != 0 {
		t.Errorf("preview of windows-virtio with an ISO: failed checks %q, want none", got)
	}
}
