package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func TestHumanBytes(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1 KiB"}, {1536, "1.5 KiB"},
		{4 << 30, "4 GiB"}, {10*1<<30 + 1<<29, "10.5 GiB"}, {3 << 40, "3 TiB"},
	}
	for _, tt := range tests {
		if got := humanBytes(tt.in); got != tt.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHumanDuration(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"}, {42 * time.Second, "42s"}, {200 * time.Second, "3m20s"}, {time.Hour, "1h"},
		{2*time.Hour + 5*time.Minute + 9*time.Second, "2h5m"}, {76 * time.Hour, "3d4h"}, {1500 * time.Millisecond, "2s"},
	}
	for _, tt := range tests {
		if got := humanDuration(tt.in); got != tt.want {
			t.Errorf("humanDuration(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestEnums(t *testing.T) {
	if got := enumShort(ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING); got != "RUNNING" {
		t.Errorf("enumShort = %q", got)
	}
	if got := enumLower(ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI); got != "virtio-scsi" {
		t.Errorf("enumLower = %q", got)
	}
	if got := enumShort(ferryv1.Platform_PLATFORM_UNSPECIFIED); got != "" {
		t.Errorf("enumShort(zero) = %q", got)
	}
	d := ferryv1.DiskBus(0).Descriptor()
	for _, in := range []string{"virtio-scsi", "VIRTIO_SCSI", "DISK_BUS_VIRTIO_SCSI", "Virtio-Scsi"} {
		if n, err := parseEnum(d, in); err != nil || n != 1 {
			t.Errorf("parseEnum(%q) = %v, %v", in, n, err)
		}
	}
	if _, err := parseEnum(d, "unspecified"); err == nil || !strings.Contains(err.Error(), "virtio-scsi, virtio-blk, sata") {
		t.Errorf("parseEnum(unspecified) = %v, want the choices listed", err)
	}
	f := newEnumFlag(ferryv1.Platform(0).Descriptor(), map[string]string{"vcenter": "vmware"})
	if err := f.Set("vcenter"); err != nil || f.value != ferryv1.Platform_PLATFORM_VMWARE.Number() || f.String() != "vmware" {
		t.Errorf("enumFlag alias: %v %v %q", err, f.value, f.String())
	}
}

func TestCodeName(t *testing.T) {
	for c, want := range map[codes.Code]string{
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.FailedPrecondition: "FAILED_PRECONDITION",
		codes.NotFound: "NOT_FOUND", codes.OK: "OK", codes.Unavailable: "UNAVAILABLE",
	} {
		if got := codeName(c); got != want {
			t.Errorf("codeName(%v) = %q, want %q", c, got, want)
		}
	}
	err := status.Error(codes.InvalidArgument, "jobs[0].target.nics: a target VM needs at least one NIC")
	if got := errorMessage(err); got != "INVALID_ARGUMENT: jobs[0].target.nics: a target VM needs at least one NIC" {
		t.Errorf("errorMessage = %q", got)
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"4GiB", 4 << 30, false}, {"4G", 4 << 30, false}, {"4GB", 4e9, false}, {"512MiB", 512 << 20, false},
		{"1.5GiB", 3 << 29, false}, {"2000000000", 2e9, false}, {"20 GiB", 20 << 30, false},
		{"", 0, true}, {"GiB", 0, true}, {"4XB", 0, true}, {"-1G", 0, true},
	}
	for _, tt := range tests {
		got, err := parseBytes(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestJSONAndYAMLOutput(t *testing.T) {
	ms := &ferryv1.MigrationServer{
		Name: "migrationServers/kvm-1", Host: "hosts/kvm-1", Type: ferryv1.Platform_PLATFORM_KVM,
		CachePath: "/var/cache", DownstreamBandwidth: "500Mbps", DownstreamBitsPerSecond: 500e6, Enabled: true,
		DisplayName: "true", // a string YAML would read as a bool unless quoted
	}
	var js bytes.Buffer
	if err := printMessage(&js, "json", ms); err != nil {
		t.Fatal(err)
	}
	var srv map[string]any
	if err := json.Unmarshal(js.Bytes(), &srv); err != nil {
		t.Fatalf("json output %q: %v", js.String(), err)
	}
	if srv["cache_path"] != "/var/cache" || srv["type"] != "PLATFORM_KVM" || srv["downstream_bits_per_second"] != "500000000" {
		t.Errorf("json fields (proto names, enum names, int64 as string) = %v", srv)
	}
	var y bytes.Buffer
	if err := printMessage(&y, "yaml", ms); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(y.String(), "{}") {
		t.Errorf("yaml output is not block style:\n%s", y.String())
	}
	var back map[string]any
	if err := yaml.Unmarshal(y.Bytes(), &back); err != nil {
		t.Fatalf("yaml output %q: %v", y.String(), err)
	}
	if back["display_name"] != "true" || back["enabled"] != true {
		t.Errorf("yaml round trip = %v\n%s", back, y.String())
	}
	if !strings.HasPrefix(y.String(), "name: migrationServers/kvm-1\ndisplay_name: \"true\"\n") {
		t.Errorf("yaml keeps the field order; got:\n%s", y.String())
	}
}

func TestTables(t *testing.T) {
	var b bytes.Buffer
	tb := newTable(&b, "NAME", "STATE", "PROGRESS")
	tb.row("migrationJobs/a", "RUNNING/CONVERTING", "45.0%")
	tb.row("migrationJobs/bb", "QUEUED", "")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	want := "NAME              STATE               PROGRESS\n" +
		"migrationJobs/a   RUNNING/CONVERTING  45.0%\n" +
		"migrationJobs/bb  QUEUED              -\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestProgressRendering(t *testing.T) {
	j := &ferryv1.MigrationJob{
		Name: "migrationJobs/a", SourceVm: "web-1", Target: &ferryv1.TargetVm{VmName: "web-1"},
		State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING, Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING,
		Disks: []*ferryv1.DiskProgress{
			{SourceDisk: "vda", DisplayName: "root", TotalBytes: 10 << 30, DoneBytes: 5 << 30, BytesPerSecond: 100 << 20, Eta: durationpb.New(51 * time.Second)},
			{SourceDisk: "vdb", TotalBytes: 10 << 30},
		},
	}
	lines := progressLines(j)
	if len(lines) != 3 {
		t.Fatalf("lines = %q, want a header and one per disk", lines)
	}
	for _, want := range []string{"RUNNING/CONVERTING", "25.0%", "100 MiB/s", "ETA 51s"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header %q lacks %q", lines[0], want)
		}
	}
	wantBar := "[" + strings.Repeat("#", 15) + strings.Repeat("-", 15) + "]"
	for _, want := range []string{"root", wantBar, "50.0%", "5 GiB/10 GiB", "ETA 51s"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("disk line %q lacks %q", lines[1], want)
		}
	}
	ev := &ferryv1.WatchMigrationJobsResponse{Type: ferryv1.WatchEventType_WATCH_EVENT_TYPE_PROGRESS, Job: j}
	line := progressLine(ev, time.Date(2024, 6, 1, 10, 0, 0, 0, time.UTC))
	if !strings.HasPrefix(line, "10:00:00 progress") || !strings.Contains(line, "25.0%  5 GiB/20 GiB  100 MiB/s  ETA 51s") {
		t.Errorf("progress line = %q", line)
	}
	// A disk being verified gets a line of its verification.
	j.Disks[0].Verification = &ferryv1.VerifyProgress{TotalBytes: 10 << 30, DoneBytes: 1 << 30, BytesPerSecond: 50 << 20}
	lines = progressLines(j)
	if len(lines) != 4 {
		t.Fatalf("lines = %q, want a header, one per disk and one for the verification", lines)
	}
	for _, want := range []string{"verify", "10.0%", "1 GiB/10 GiB", "50 MiB/s", "ETA 3m"} {
		if !strings.Contains(lines[2], want) {
			t.Errorf("verification line %q lacks %q", lines[2], want)
		}
	}
	var vt bytes.Buffer
	if err := verifyTable(&vt, j.Disks); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"VERIFY", "CHECKED/TOTAL", "root", "10.0%", "1 GiB/10 GiB", "50 MiB/s"} {
		if !strings.Contains(vt.String(), want) {
			t.Errorf("verification table lacks %q:\n%s", want, vt.String())
		}
	}
	if strings.Contains(vt.String(), "vdb") {
		t.Errorf("verification table lists vdb, which has none:\n%s", vt.String())
	}
	failed := &ferryv1.MigrationJob{Name: "migrationJobs/b", State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, Reason: "agent lost"}
	if got := progressLines(failed); len(got) != 1 || !strings.Contains(got[0], "FAILED  agent lost") {
		t.Errorf("failed job = %q", got)
	}
}

func TestScreenRedrawsInPlace(t *testing.T) {
	var b bytes.Buffer
	s := &screen{w: &b}
	s.draw([]string{"a", "b"})
	b.Reset()
	s.draw([]string{"c"})
	want := "\x1b[2A" + "\r\x1b[2Kc\n" + "\r\x1b[2K\n" + "\x1b[1A"
	if b.String() != want {
		t.Errorf("redraw = %q, want %q", b.String(), want)
	}
}

func TestJobDetailsTable(t *testing.T) {
	now = func() time.Time { return time.Date(2024, 6, 1, 10, 5, 0, 0, time.UTC) }
	defer func() { now = time.Now }()
	j := &ferryv1.MigrationJob{
		Name: "migrationJobs/a", Source: "sources/kvm-src", SourceVm: "web-1", MigrationServer: "migrationServers/kvm-1",
		State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, Reason: "agent lost", Attempt: 2, Epoch: 3,
		Target: &ferryv1.TargetVm{VmName: "web-1", Cluster: "clusters/prod", Cpus: 2, MemoryBytes: 4 << 30,
			Nics: []*ferryv1.TargetNic{{SourceMac: "52:54:00:00:00:01", L3Network: "l3Networks/lan", Ip: "10.0.0.5"}}},
		CreateTime: timestamppb.New(time.Date(2024, 6, 1, 10, 0, 0, 0, time.UTC)),
		Duration:   durationpb.New(200 * time.Second),
	}
	var b bytes.Buffer
	if err := printDetails(&b, jobDetails(j)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"State:               FAILED\n", "Reason:              agent lost\n", "CPUs / memory:       2 / 4 GiB\n",
		"NIC 0:               52:54:00:00:00:01 → l3Networks/lan mac=(source) ip=10.0.0.5\n",
		"Created:             2024-06-01 10:00:00Z (5m ago)\n", "Duration:            3m20s\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("job details lack %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "Waiting:") || strings.Contains(b.String(), "Started:") {
		t.Errorf("empty fields are left out:\n%s", b.String())
	}
}

func TestPhaseTable(t *testing.T) {
	at := func(ms int) *timestamppb.Timestamp {
		return timestamppb.New(time.Date(2024, 6, 1, 10, 0, 0, 0, time.UTC).Add(time.Duration(ms) * time.Millisecond))
	}
	ts := []*ferryv1.PhaseTiming{
		{Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, StartTime: at(0), EndTime: at(8000), Bytes: 1 << 30, BytesPerSecond: 1 << 27},
		{Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING, StartTime: at(20), EndTime: at(9500), Bytes: 1 << 30, BytesPerSecond: 113265893},
		{Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING, StartTime: at(9500)},
	}
	var b bytes.Buffer
	if err := phaseTable(&b, ts); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := [][]string{
		{"PHASE", "BEGAN", "ENDED", "TOOK", "BYTES", "RATE"},
		{"CONVERTING", "+0.0s", "+8.0s", "8.0s", "1 GiB", "128 MiB/s"},
		{"UPLOADING", "+0.0s", "+9.5s", "9.5s", "1 GiB", "108 MiB/s"},
		{"CONFIGURING", "+9.5s", "running", "-", "0 B", "-"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", b.String())
	}
	for i, l := range lines {
		if got := strings.Fields(l); strings.Join(got, "|") != strings.Join(splitUnits(want[i]), "|") {
			t.Errorf("line %d = %q, want %v", i, l, want[i])
		}
	}
}

// splitUnits splits "1.0 GiB" into its number and unit, as strings.Fields
// splits a table line.
func splitUnits(cols []string) []string {
	var out []string
	for _, c := range cols {
		out = append(out, strings.Fields(c)...)
	}
	return out
}
