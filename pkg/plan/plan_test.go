package plan

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// fixture reads testdata/name: plan.yaml and plan.json both hold the plan
// of wantPlan (ferryctl's tests read them too).
func fixture(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantPlan() *ferryv1.CreateMigrationJobsRequest {
	return &ferryv1.CreateMigrationJobsRequest{
		Source: "sources/kvm-src", MigrationServer: "migrationServers/kvm-1", RequestId: "plan-2024-06-01",
		Jobs: []*ferryv1.MigrationJobSpec{{
			SourceVm: "web-1",
			Target: &ferryv1.TargetVm{
				VmName: "web-1", Cluster: "clusters/prod", PrimaryStorage: "primaryStorages/local-1", Cpus: 2, MemoryBytes: 4 << 30,
				Disks:    []*ferryv1.TargetDisk{{SourceDisk: "vda", DisplayName: "root", SizeBytes: 20 << 30}},
				Nics:     []*ferryv1.TargetNic{{SourceMac: "52:54:00:12:34:56", L3Network: "l3Networks/lan"}},
				Firmware: ferryv1.Firmware_FIRMWARE_UEFI,
			},
			Options: &ferryv1.MigrationOptions{Compression: ferryv1.Compression_COMPRESSION_ZSTD, AutoStart: proto.Bool(false)},
		}},
	}
}

func TestParse(t *testing.T) {
	for name, text := range map[string]string{"yaml": fixture(t, "plan.yaml"), "json": fixture(t, "plan.json")} {
		t.Run(name, func(t *testing.T) {
			got, err := Parse([]byte(text))
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, wantPlan()) {
				t.Fatalf("plan = %v\nwant %v", got, wantPlan())
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, text, want string
	}{
		{"unknown field", "source: sources/a\njobs:\n  - source_vm: a\n    target: {vm_nmae: x}\n", "vm_nmae"},
		{"wrong type", "source: sources/a\njobs:\n  - source_vm: a\n    target: {cpus: two}\n", "cpus"},
		{"bad enum", "source: sources/a\njobs:\n  - source_vm: a\n    target: {firmware: EFI}\n", "EFI"},
		{"no jobs", "source: sources/a\n", "no jobs"},
		{"empty", "", "empty"},
		{"not a mapping", "- a\n- b\n", "want a mapping"},
		{"bad yaml", "source: [a\n", "read YAML"},
		{"non-string key", "source: sources/a\njobs:\n  - {1: a}\n", "field names"},
		{"too big", "source: " + strings.Repeat("a", MaxSize), "at most"},
		{"alias bomb", aliasBomb(), "read YAML"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.text))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// aliasBomb is a "billion laughs" YAML: each of nine levels aliases
// the one before ten times.
func aliasBomb() string {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= 9; i++ {
		prev := fmt.Sprintf("*a%d", i-1)
		fmt.Fprintf(&b, "a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(prev+", ", 10), ", "))
	}
	return b.String()
}

// FuzzParse: any input gives an error or a request; a request printed
// back as protojson reads back the same (nothing lost or invented on the
// way YAML → JSON → proto).
func FuzzParse(f *testing.F) {
	for _, s := range []string{fixture(f, "plan.yaml"), fixture(f, "plan.json"), "source: a\njobs: [{}]\n", "jobs:\n  - target: {nics: [{}, {}]}\n",
		"{\"jobs\": [{\"options\": {\"auto_start\": null}}]}", "jobs: [&x {source_vm: a}, *x]\n", "source: \"\\u00e9\"\njobs: [{}]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := Parse(data)
		if err != nil {
			if req != nil {
				t.Fatalf("Parse returned both %v and %v", req, err)
			}
			return
		}
		if len(req.GetJobs()) == 0 {
			t.Fatalf("Parse accepted a plan with no jobs: %q", data)
		}
		js, err := protojson.Marshal(req)
		if err != nil {
			t.Fatalf("marshal %v: %v", req, err)
		}
		again, err := Parse(js)
		if err != nil {
			t.Fatalf("the plan's own JSON %s does not parse: %v", js, err)
		}
		if !proto.Equal(req, again) {
			t.Fatalf("round trip changed the plan:\n%v\n%v", req, again)
		}
		// And the YAML that job export writes.
		y, err := Marshal(req, false)
		if err != nil {
			t.Fatalf("marshal %v as YAML: %v", req, err)
		}
		if again, err = Parse(y); err != nil || !proto.Equal(req, again) {
			t.Fatalf("the plan's own YAML\n%s\nreads back as %v, %v; want %v", y, again, err, req)
		}
	})
}

// TestExportRoundTrip: a plan written from jobs reads back as the same
// request, in YAML and in JSON; jobs of two sources are refused.
func TestExportRoundTrip(t *testing.T) {
	job := func(name, source, vm string) *ferryv1.MigrationJob {
		return &ferryv1.MigrationJob{Name: name, Source: source, MigrationServer: "migrationServers/kvm-1", SourceVm: vm,
			DisplayName: "wave 1", Description: "line one\nline two", State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED,
			Target: &ferryv1.TargetVm{VmName: vm + "-new", Cluster: "clusters/prod", PrimaryStorage: "primaryStorages/local-1",
				Cpus: 2, MemoryBytes: 2 << 30, Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 10 << 30}},
				Nics: []*ferryv1.TargetNic{{SourceMac: "52:54:00:00:00:01", Mac: "52:54:00:00:00:01", L3Network: "l3Networks/lan", Ip: "10.0.0.101"}}},
			Options: &ferryv1.MigrationOptions{AutoStart: proto.Bool(true)}}
	}
	jobs := []*ferryv1.MigrationJob{job("migrationJobs/a", "sources/kvm", "web-1"), job("migrationJobs/b", "sources/kvm", "web-2")}
	jobs[1].Options = nil
	want, err := FromJobs(jobs)
	if err != nil {
		t.Fatal(err)
	}
	for _, asJSON := range []bool{false, true} {
		b, err := Marshal(want, asJSON)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(b)
		if err != nil {
			t.Fatalf("parse the exported plan (json %v): %v\n%s", asJSON, err, b)
		}
		if !proto.Equal(got, want) {
			t.Errorf("round trip (json %v):\n%s\ngot  %v\nwant %v", asJSON, b, got, want)
		}
	}
	if want.GetSource() != "sources/kvm" || want.GetJobs()[0].GetDisplayName() != "wave 1" || want.GetJobs()[0].GetTarget().GetNics()[0].GetIp() != "10.0.0.101" {
		t.Errorf("plan = %v", want)
	}
	_, err = FromJobs(append(jobs, job("migrationJobs/c", "sources/other", "db-1")))
	if err == nil || !strings.Contains(err.Error(), "sources/other → migrationServers/kvm-1") {
		t.Errorf("jobs of two sources: %v", err)
	}
}
