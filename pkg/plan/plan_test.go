package plan

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const yamlPlan = `
source: sources/kvm-src
migration_server: migrationServers/kvm-1
request_id: plan-2024-06-01
jobs:
  - source_vm: web-1
    target:
      vm_name: web-1
      cluster: clusters/prod
      primary_storage: primaryStorages/local-1
      cpus: 2
      memory_bytes: 4294967296
      disks:
        - {source_disk: vda, display_name: root, size_bytes: 21474836480}
      nics:
        - source_mac: 52:54:00:12:34:56
          l3_network: l3Networks/lan
      firmware: FIRMWARE_UEFI
    options:
      compression: COMPRESSION_ZSTD
      auto_start: false
`

const jsonPlan = `{"source": "sources/kvm-src", "migration_server": "migrationServers/kvm-1",
 "request_id": "plan-2024-06-01",
 "jobs": [{"source_vm": "web-1", "target": {"vm_name": "web-1", "cluster": "clusters/prod",
   "primary_storage": "primaryStorages/local-1", "cpus": 2, "memory_bytes": "4294967296",
   "disks": [{"source_disk": "vda", "display_name": "root", "size_bytes": 21474836480}],
   "nics": [{"source_mac": "52:54:00:12:34:56", "l3_network": "l3Networks/lan"}],
   "firmware": "FIRMWARE_UEFI"},
  "options": {"compression": "COMPRESSION_ZSTD", "auto_start": false}}]}`

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
	for name, text := range map[string]string{"yaml": yamlPlan, "json": jsonPlan} {
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
	for _, s := range []string{yamlPlan, jsonPlan, "source: a\njobs: [{}]\n", "jobs:\n  - target: {nics: [{}, {}]}\n",
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
	})
}
