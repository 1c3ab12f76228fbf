package vmware

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/vmware/govmomi/vim25/types"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
)

func TestValidate(t *testing.T) {
	ok := Config{Address: "vc.example.com", User: "administrator@vsphere.local", Password: "pw"}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"no address", func(c *Config) { c.Address = "" }, "address"},
		{"URL as address", func(c *Config) { c.Address = "https://vc/sdk" }, "address"},
		{"port", func(c *Config) { c.Port = 70000 }, "port"},
		{"no user", func(c *Config) { c.User = "" }, "user"},
		{"no password", func(c *Config) { c.Password = "" }, "password"},
		{"short thumbprint", func(c *Config) { c.Thumbprint = "AB:CD" }, "neither SHA-1"},
		{"thumbprint not hex", func(c *Config) { c.Thumbprint = strings.Repeat("ZZ", 20) }, "not hex"},
		{"CA not PEM", func(c *Config) { c.CACertificatePEM = "nope" }, "CA certificate"},
		{"TLS with HTTP", func(c *Config) { c.UseHTTP, c.SkipHostnameCheck = true, true }, "plain HTTP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.change(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate: %v, want ErrConfig about %q", err, tt.want)
			}
		})
	}
	if c := (Config{UseHTTP: true}).withDefaults(); c.Port != DefaultHTTPPort || c.ShutdownTimeout != DefaultShutdownTimeout {
		t.Errorf("defaults over HTTP: port %d timeout %v", c.Port, c.ShutdownTimeout)
	}
}

func TestCheckVersion(t *testing.T) {
	for v, ok := range map[string]bool{"4.1.0": false, "5.0.0": true, "6.7.0": true, "8.0.2.0": true, "10.0": true, "x": false} {
		if err := checkVersion("vCenter", v); (err == nil) != ok {
			t.Errorf("checkVersion(%s): %v", v, err)
		} else if err != nil && !errors.Is(err, ErrVersion) {
			t.Errorf("checkVersion(%s): %v is not ErrVersion", v, err)
		}
	}
}

func TestPrecheck(t *testing.T) {
	disk := Disk{Name: "2000", Label: "Hard disk 1", Mode: "persistent"}
	indep := Disk{Name: "2001", Label: "Hard disk 2", Mode: "independent_persistent"}
	base := VM{Name: "web", Host: Host{Name: "esx1", Version: "7.0.3"}, Disks: []Disk{disk, indep}}
	tests := []struct {
		name   string
		change func(*VM)
		disks  []Disk
		want   []string
	}{
		{"fine", func(*VM) {}, []Disk{disk}, nil},
		{"template", func(v *VM) { v.Template = true }, []Disk{disk}, []string{"VM web is a template"}},
		{"maintenance", func(v *VM) { v.Host.InMaintenanceMode = true }, []Disk{disk},
			[]string{"host esx1 of VM web is in maintenance mode"}},
		{"independent disk", func(*VM) {}, []Disk{disk, indep},
			[]string{"disk 2001 (Hard disk 2) of VM web is in independent_persistent mode"}},
		{"old host", func(v *VM) { v.Host.Version = "4.1.0" }, []Disk{disk}, []string{"host esx1 is version 4.1.0"}},
		{"all at once", func(v *VM) { v.Template, v.Host.InMaintenanceMode = true, true }, []Disk{indep},
			[]string{"template", "maintenance", "independent_persistent"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := base
			tt.change(&vm)
			err := Precheck(&vm, tt.disks)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrPrecheck) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Precheck: %v, want one line wrapping ErrPrecheck", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Precheck: %v, want %q", err, w)
				}
			}
		})
	}
}

func TestSelectDisks(t *testing.T) {
	vm := &VM{Name: "web", Disks: []Disk{{Name: "2000", Label: "Hard disk 1"}, {Name: "2001", Label: "Hard disk 2"}}}
	got, err := SelectDisks(vm, []*ferryv1.TargetDisk{{SourceDisk: "2001"}, {SourceDisk: "Hard disk 1"}})
	if err != nil || len(got) != 2 || got[0].Name != "2001" || got[1].Name != "2000" {
		t.Fatalf("SelectDisks: %v %v", got, err)
	}
	if all, _ := SelectDisks(vm, nil); len(all) != 2 {
		t.Errorf("no disks named: %v, want all", all)
	}
	if _, err := SelectDisks(vm, []*ferryv1.TargetDisk{{SourceDisk: "scsi0:3"}}); err == nil ||
		!strings.Contains(err.Error(), "its disks: 2000, 2001") {
		t.Errorf("unknown disk: %v", err)
	}
}

func TestMatchDiskURLs(t *testing.T) {
	yes, no := types.NewBool(true), types.NewBool(false)
	disks := []Disk{
		{Name: "2000", Controller: "VirtualLsiLogicController", BusNumber: 0, Unit: 0},
		{Name: "2001", Controller: "VirtualLsiLogicController", BusNumber: 0, Unit: 1},
	}
	byKey := []types.HttpNfcLeaseDeviceUrl{
		{Key: "/vm-42/VirtualLsiLogicController0:1", Url: "https://esx/nfc/x/disk-1.vmdk", Disk: yes},
		{Key: "/vm-42/VirtualCdrom0", Url: "https://esx/nfc/x/a.iso", Disk: no},
		{Key: "/vm-42/VirtualLsiLogicController0:0", Url: "https://esx/nfc/x/disk-0.vmdk", Disk: yes},
	}
	got, err := matchDiskURLs(byKey, disks)
	if err != nil || !strings.HasSuffix(got["2000"].Url, "disk-0.vmdk") || !strings.HasSuffix(got["2001"].Url, "disk-1.vmdk") {
		t.Errorf("by key: %v %v", got, err)
	}
	byOrder := []types.HttpNfcLeaseDeviceUrl{
		{Key: "/vm-42/disk:0", Url: "https://vc/nfc/x/a.vmdk"},
		{Key: "/vm-42/cdrom:0", Url: "https://vc/nfc/x/b.iso"},
		{Key: "/vm-42/disk:1", Url: "https://vc/nfc/x/c.vmdk"},
	}
	got, err = matchDiskURLs(byOrder, disks)
	if err != nil || !strings.HasSuffix(got["2000"].Url, "a.vmdk") || !strings.HasSuffix(got["2001"].Url, "c.vmdk") {
		t.Errorf("by order: %v %v", got, err)
	}
	if _, err := matchDiskURLs(byOrder[:1], disks); err == nil {
		t.Error("fewer URLs than disks matched")
	}
}

func TestSniff(t *testing.T) {
	for head, want := range map[string]string{
		"KDMV\x01\x00\x00\x00":                       formatSparse,
		"COWD\x01\x00\x00\x00":                       formatCOWD,
		"# Disk DescriptorFile\nversion=1\n":         formatDescriptor,
		"version=1\ncreateType=\"monolithicFlat\"\n": formatDescriptor,
		"\xeb\x63\x90\x00\x00createType=":            formatRaw,
		"":                                           formatRaw,
	} {
		if got := sniff([]byte(head)); got != want {
			t.Errorf("sniff(%q) = %s, want %s", head, got, want)
		}
	}
}

// memSink is an in-memory Sink that records its writes.
type memSink struct {
	data   []byte
	writes [][2]int64
}

func (m *memSink) WriteAt(_ context.Context, p []byte, off int64) error {
	if off%cache.Granule != 0 || (len(p)%cache.Granule != 0 && off+int64(len(p)) != int64(len(m.data))) {
		return errors.New("unaligned write")
	}
	copy(m.data[off:], p)
	m.writes = append(m.writes, [2]int64{off, int64(len(p))})
	return nil
}

func (m *memSink) Flush(context.Context) error { return nil }

func TestCopyFlat(t *testing.T) {
	const size = 3*flatChunk + 3*cache.Granule + 512 // ends inside a granule
	src := make([]byte, size)
	for _, g := range []int64{0, 1, 2, 40, 41, 96, 99} { // data granules, in runs; 99 is the last 512 bytes
		for i := range cache.Granule {
			if off := g*cache.Granule + int64(i); off < size {
				src[off] = byte(g + 1)
			}
		}
	}
	src[size-1] = 7
	dst := &memSink{data: make([]byte, size)}
	var last int64
	if err := copyFlat(context.Background(), bytes.NewReader(src), dst, 0, size, func(n int64) { last = n }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.data, src) || last != size {
		t.Fatalf("copy differs, or progress %d of %d", last, size)
	}
	var written int64
	for _, w := range dst.writes {
		written += w[1]
	}
	if want := int64(6*cache.Granule + 512); written != want {
		t.Errorf("wrote %d bytes in %v, want only the %d of data granules", written, dst.writes, want)
	}
	err := copyFlat(context.Background(), bytes.NewReader(src[:size/2]), &memSink{data: make([]byte, size)}, 0, size, nil)
	if !errors.Is(err, ErrExport) || !strings.Contains(err.Error(), "ended at byte") {
		t.Errorf("short body: %v", err)
	}
	if err := copyFlat(context.Background(), io.LimitReader(bytes.NewReader(src), 0), dst, 512, 1, nil); err == nil {
		t.Error("an extent off the granule boundary was accepted")
	}
}
