package vmdk

import (
	"errors"
	"reflect"
	"testing"
)

// An ESXi thin disk's descriptor, as a datastore holds it.
const esxiDescriptor = `# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=a1b2c3d4
parentCID=ffffffff
isNativeSnapshot="no"
createType="vmfs"

# Extent description
RW 83886080 VMFS "web-01-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.deletable = "true"
ddb.geometry.cylinders = "5221"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "0e5f1d1c1b1a19181716151413121110"
ddb.thinProvisioned = "1"
ddb.uuid = "60 00 C2 9a 7b 3c 4d 5e-6f 70 81 92 a3 b4 c5 d6"
ddb.virtualHWVersion = "13"
`

func TestParseDescriptor(t *testing.T) {
	d, err := ParseDescriptor([]byte(esxiDescriptor))
	if err != nil {
		t.Fatal(err)
	}
	want := &Descriptor{
		Version: 1, CID: 0xa1b2c3d4, ParentCID: NoParent, CreateType: "vmfs",
		Extents: []ExtentDesc{{Access: "RW", Sectors: 83886080, Type: "VMFS", File: "web-01-flat.vmdk"}},
		DDB: map[string]string{
			"ddb.adapterType": "lsilogic", "ddb.deletable": "true", "ddb.geometry.cylinders": "5221",
			"ddb.geometry.heads": "255", "ddb.geometry.sectors": "63",
			"ddb.longContentID": "0e5f1d1c1b1a19181716151413121110", "ddb.thinProvisioned": "1",
			"ddb.uuid": "60 00 C2 9a 7b 3c 4d 5e-6f 70 81 92 a3 b4 c5 d6", "ddb.virtualHWVersion": "13",
		},
		Fields: map[string]string{"encoding": "UTF-8", "isNativeSnapshot": "no"},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("got %+v\nwant %+v", d, want)
	}
	if d.Capacity() != 40<<30 || d.AdapterType() != "lsilogic" || d.HasParent() || d.Supported() != nil {
		t.Fatalf("capacity %d adapter %q parent %v supported %v", d.Capacity(), d.AdapterType(), d.HasParent(), d.Supported())
	}
	if g, ok := d.Geometry(); !ok || g != (Geometry{5221, 255, 63}) {
		t.Fatalf("geometry %+v %v", g, ok)
	}
}

func TestParseDescriptorCases(t *testing.T) {
	head := "# Disk DescriptorFile\nversion=1\n"
	for name, c := range map[string]struct {
		text      string
		err       error // of ParseDescriptor
		supported error // of Supported
		extents   []ExtentDesc
	}{
		"embedded, NUL padded": {text: head + "createType=\"streamOptimized\"\nRW 6055 SPARSE \"s.vmdk\"\n\x00\x00junk",
			extents: []ExtentDesc{{"RW", 6055, "SPARSE", "s.vmdk", 0}}},
		"crlf and spaces in names": {text: "# Disk DescriptorFile\r\nversion=1\r\ncreateType=\"twoGbMaxExtentFlat\"\r\n" +
			"RW 4192256 FLAT \"My Disk-f001.vmdk\" 0\r\nRW 8192 FLAT \"My Disk-f002.vmdk\" 0\r\nRDONLY 100 ZERO\r\n",
			extents: []ExtentDesc{{"RW", 4192256, "FLAT", "My Disk-f001.vmdk", 0},
				{"RW", 8192, "FLAT", "My Disk-f002.vmdk", 0}, {"RDONLY", 100, "ZERO", "", 0}}},
		"delta disk": {text: head + "CID=11111111\nparentCID=22222222\ncreateType=\"vmfsSparse\"\n" +
			"parentFileNameHint=\"base.vmdk\"\nRW 8 VMFSSPARSE \"d-delta.vmdk\"\n", supported: ErrUnsupported},
		"sesparse":      {text: head + "createType=\"seSparse\"\nRW 8 SESPARSE \"d-sesparse.vmdk\"\n", supported: ErrUnsupported},
		"rdm":           {text: head + "createType=\"vmfsRawDeviceMap\"\nRW 8 VMFSRDM \"d-rdm.vmdk\"\n", supported: ErrUnsupported},
		"no createType": {text: head + "RW 8 FLAT \"x\" 0\n", err: ErrCorrupt},
		"bad extent":    {text: head + "createType=\"vmfs\"\nRW lots VMFS \"x\"\n", err: ErrCorrupt},
		"bad CID":       {text: head + "CID=zz\ncreateType=\"vmfs\"\n", err: ErrCorrupt},
		"unterminated":  {text: head + "createType=\"vmfs\"\nRW 8 VMFS \"x\n", err: ErrCorrupt},
		"no file":       {text: head + "createType=\"vmfs\"\nRW 8 VMFS\n", err: ErrCorrupt},
		"huge":          {text: head + "createType=\"vmfs\"\nRW 99999999999999999 VMFS \"x\"\n", err: ErrCorrupt},
		"too big":       {text: head + "createType=\"vmfs\"\nRW 137438953472 VMFS \"x\"\nRW 137438953472 VMFS \"y\"\n", err: ErrCorrupt},
		"not text":      {text: "\x7fELF\x02\x01\x01", err: ErrNotVMDK},
		"empty":         {text: "", err: ErrNotVMDK},
	} {
		t.Run(name, func(t *testing.T) {
			d, err := ParseDescriptor([]byte(c.text))
			if !errors.Is(err, c.err) || (err == nil) != (c.err == nil) {
				t.Fatalf("ParseDescriptor: %v, want %v", err, c.err)
			}
			if err != nil {
				return
			}
			if err := d.Supported(); !errors.Is(err, c.supported) || (err == nil) != (c.supported == nil) {
				t.Fatalf("Supported: %v, want %v", err, c.supported)
			}
			if c.extents != nil && !reflect.DeepEqual(d.Extents, c.extents) {
				t.Fatalf("extents %+v, want %+v", d.Extents, c.extents)
			}
		})
	}
}
