package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/plan"
)

// planFixture reads pkg/plan's test plan (testdata/plan.yaml or
// plan.json) and the request it stands for, as pkg/plan's tests check it.
func planFixture(t *testing.T, name string) (string, *ferryv1.CreateMigrationJobsRequest) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "pkg", "plan", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	want, err := plan.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), want
}

func TestParseNICAndDisk(t *testing.T) {
	nic, err := parseNIC("52:54:00:aa:bb:cc=lan,mac=52:54:00:00:00:01,ip=10.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	want := &ferryv1.TargetNic{SourceMac: "52:54:00:aa:bb:cc", L3Network: "l3Networks/lan", Mac: "52:54:00:00:00:01", Ip: "10.0.0.5"}
	if !proto.Equal(nic, want) {
		t.Errorf("nic = %v", nic)
	}
	for _, bad := range []string{"52:54:00:aa:bb:cc", "x=lan,speed=10", "=,"} {
		if _, err := parseNIC(bad); err == nil {
			t.Errorf("parseNIC(%q): want an error", bad)
		}
	}
	disk, err := parseDisk("vda=20GiB,name=root")
	if err != nil || !proto.Equal(disk, &ferryv1.TargetDisk{SourceDisk: "vda", SizeBytes: 20 << 30, DisplayName: "root"}) {
		t.Errorf("disk = %v, %v", disk, err)
	}
	for _, bad := range []string{"vda", "vda=big", "=1G", "vda=1G,label=x"} {
		if _, err := parseDisk(bad); err == nil {
			t.Errorf("parseDisk(%q): want an error", bad)
		}
	}
}

func TestJobRequestFromFlagsAndPlan(t *testing.T) {
	jsonPlan, want := planFixture(t, "plan.json")
	yamlPlan, _ := planFixture(t, "plan.yaml")
	a := &app{io: IO{In: strings.NewReader(jsonPlan)}}
	jf := &jobFlags{
		source: "kvm-src", server: "kvm-1", vm: "web-1", cluster: "prod", store: "local-1", cpus: 2, memory: "4GiB",
		disks: []string{"vda=20GiB,name=root"}, nics: []string{"52:54:00:12:34:56=lan"},
		firmware: newEnumFlag(ferryv1.Firmware(0).Descriptor(), nil), osType: newEnumFlag(ferryv1.OsType(0).Descriptor(), nil),
		diskBus: newEnumFlag(ferryv1.DiskBus(0).Descriptor(), nil), compression: newEnumFlag(ferryv1.Compression(0).Descriptor(), nil),
		noStart: true, reqID: "plan-2024-06-01",
	}
	_ = jf.firmware.Set("uefi")
	_ = jf.compression.Set("zstd")
	fromFlags, err := a.jobRequest(jf)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(fromFlags, want) {
		t.Fatalf("from flags = %v\nwant %v", fromFlags, want)
	}

	path := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(path, []byte(yamlPlan), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{path, "-"} {
		got, err := a.jobRequest(&jobFlags{planFile: file})
		if err != nil || !proto.Equal(got, want) {
			t.Fatalf("plan %s = %v, %v", file, got, err)
		}
	}
	generated, err := a.jobRequest(&jobFlags{planFile: path + ".none"})
	if err == nil {
		t.Fatalf("missing plan file: %v", generated)
	}
}

func TestRequestIDGenerated(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plan.yaml")
	yamlPlan, _ := planFixture(t, "plan.yaml")
	plan := strings.Replace(yamlPlan, "request_id: plan-2024-06-01\n", "", 1)
	if err := os.WriteFile(path, []byte(plan), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &app{}
	r1, err1 := a.jobRequest(&jobFlags{planFile: path})
	r2, err2 := a.jobRequest(&jobFlags{planFile: path})
	if err1 != nil || err2 != nil || !strings.HasPrefix(r1.GetRequestId(), "ferryctl-") || r1.GetRequestId() == r2.GetRequestId() {
		t.Fatalf("request ids %q, %q (%v, %v): want fresh ones", r1.GetRequestId(), r2.GetRequestId(), err1, err2)
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	tests := [][]string{
		{"job", "create"}, // required flags
		{"job", "create", "-f", "p.yaml", "--vm", "x"}, // -f with flags
		{"server", "bandwidth", "s1"},                  // nothing to change
		{"settings", "update"},                         // nothing to change
		{"cluster", "get"},                             // missing argument
		{"server", "create", "--type", "hyperv"},       // bad enum
		{"nosuch"},
		{"job", "nosuch"},
	}
	for _, args := range tests {
		var out, errOut strings.Builder
		code := Execute(context.Background(), args, IO{Out: &out, Err: &errOut})
		if code != exitUsage || !strings.HasPrefix(errOut.String(), "ferryctl: ") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errOut.String())
		}
	}
}
