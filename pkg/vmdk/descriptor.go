package vmdk

import (
	"bytes"
	"strconv"
	"strings"
)

// NoParent is the parentCID of a disk without a parent.
const NoParent = 0xffffffff

// Descriptor is a VMDK's disk descriptor: the text that names the disk's
// kind, its extents and its disk database, embedded in a sparse extent or
// kept in its own .vmdk file next to flat extents.
type Descriptor struct {
	Version            int
	CID, ParentCID     uint32
	CreateType         string // monolithicSparse, streamOptimized, monolithicFlat, vmfs, ...
	ParentFileNameHint string
	Extents            []ExtentDesc
	// DDB holds the disk database, keyed as written: "ddb.adapterType",
	// "ddb.geometry.cylinders", "ddb.uuid", ...
	DDB map[string]string
	// Fields holds the other key=value lines (encoding, isNativeSnapshot, ...).
	Fields map[string]string
}

// ExtentDesc is one extent line: `RW 4192256 FLAT "disk-flat.vmdk" 0`.
type ExtentDesc struct {
	Access  string // RW, RDONLY or NOACCESS
	Sectors int64
	Type    string // FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, SESPARSE, VMFSRDM, VMFSRAW
	File    string // empty for ZERO
	Offset  int64  // sectors into File where a FLAT extent starts
}

// Geometry is the BIOS geometry the disk database records.
type Geometry struct{ Cylinders, Heads, Sectors int64 }

// ParseDescriptor parses descriptor text. It stops at the first NUL, as an
// embedded descriptor is padded with them. Text that is no descriptor is
// ErrNotVMDK; a malformed extent or CID line is ErrCorrupt at its offset.
func ParseDescriptor(b []byte) (*Descriptor, error) {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	d := &Descriptor{CID: NoParent, ParentCID: NoParent, DDB: map[string]string{}, Fields: map[string]string{}}
	seen := false
	for off := 0; off < len(b); {
		end := bytes.IndexByte(b[off:], '\n')
		if end < 0 {
			end = len(b) - off
		}
		line := strings.TrimSpace(string(b[off : off+end]))
		if strings.HasPrefix(line, "# Disk DescriptorFile") {
			seen = true
		}
		if err := d.parseLine(line, int64(off)); err != nil {
			return nil, err
		}
		off += end + 1
	}
	if !seen && d.CreateType == "" && d.Version == 0 {
		return nil, ErrNotVMDK
	}
	if d.CreateType == "" {
		return nil, corruptf(0, "descriptor without createType")
	}
	if d.Capacity() > MaxCapacity {
		return nil, corruptf(0, "extents of %d bytes in all", d.Capacity())
	}
	return d, nil
}

func (d *Descriptor) parseLine(line string, off int64) error {
	if line == "" || line[0] == '#' {
		return nil
	}
	if tok, _, _ := strings.Cut(line, " "); tok == "RW" || tok == "RDONLY" || tok == "NOACCESS" {
		e, err := parseExtentLine(line)
		if err != nil {
			return corruptf(off, "extent line %q: %s", line, err)
		}
		d.Extents = append(d.Extents, e)
		return nil
	}
	key, val, ok := strings.Cut(line, "=")
	if !ok {
		return nil // VMware's readers ignore what they do not know
	}
	key, val = strings.TrimSpace(key), unquote(strings.TrimSpace(val))
	var err error
	switch {
	case key == "version":
		d.Version, err = strconv.Atoi(val)
	case key == "CID":
		d.CID, err = parseCID(val)
	case key == "parentCID":
		d.ParentCID, err = parseCID(val)
	case key == "createType":
		d.CreateType = val
	case key == "parentFileNameHint":
		d.ParentFileNameHint = val
	case strings.HasPrefix(key, "ddb."):
		d.DDB[key] = val
	default:
		d.Fields[key] = val
	}
	if err != nil {
		return corruptf(off, "%s=%q: %v", key, val, err)
	}
	return nil
}

func parseCID(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 16, 32)
	return uint32(v), err
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

// parseExtentLine parses `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
func parseExtentLine(line string) (ExtentDesc, error) {
	f, err := extentFields(line)
	if err != nil {
		return ExtentDesc{}, err
	}
	if len(f) < 3 || len(f) > 5 {
		return ExtentDesc{}, errString("want ACCESS SECTORS TYPE [\"FILE\" [OFFSET]]")
	}
	e := ExtentDesc{Access: f[0], Type: f[2]}
	if e.Sectors, err = strconv.ParseInt(f[1], 10, 64); err != nil || e.Sectors < 0 ||
		e.Sectors > MaxCapacity/SectorSize {
		return e, errString("bad sector count")
	}
	if len(f) >= 4 {
		e.File = f[3]
	}
	if len(f) == 5 {
		if e.Offset, err = strconv.ParseInt(f[4], 10, 64); err != nil || e.Offset < 0 ||
			e.Offset > MaxCapacity/SectorSize {
			return e, errString("bad offset")
		}
	}
	if e.File == "" && e.Type != "ZERO" {
		return e, errString("no file")
	}
	return e, nil
}

// extentFields splits on blanks; a quoted field keeps its blanks.
func extentFields(line string) ([]string, error) {
	var f []string
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimLeft(s, " \t") {
		if s[0] == '"' {
			end := strings.IndexByte(s[1:], '"')
			if end < 0 {
				return nil, errString("unterminated file name")
			}
			f = append(f, s[1:end+1])
			s = s[end+2:]
			continue
		}
		end := strings.IndexAny(s, " \t")
		if end < 0 {
			end = len(s)
		}
		f = append(f, s[:end])
		s = s[end:]
	}
	return f, nil
}

type errString string

func (e errString) Error() string { return string(e) }

// Capacity is the virtual disk size in bytes: the sum of its extents.
func (d *Descriptor) Capacity() int64 {
	var n int64
	for _, e := range d.Extents {
		n += e.Sectors
		if n > MaxCapacity/SectorSize {
			return MaxCapacity + 1
		}
	}
	return n * SectorSize
}

// AdapterType is ddb.adapterType: ide, buslogic, lsilogic, legacyESX, pvscsi...
func (d *Descriptor) AdapterType() string { return d.DDB["ddb.adapterType"] }

// Geometry is ddb.geometry.*; ok is false when any of them is missing.
func (d *Descriptor) Geometry() (g Geometry, ok bool) {
	var errs [3]error
	g.Cylinders, errs[0] = strconv.ParseInt(d.DDB["ddb.geometry.cylinders"], 10, 64)
	g.Heads, errs[1] = strconv.ParseInt(d.DDB["ddb.geometry.heads"], 10, 64)
	g.Sectors, errs[2] = strconv.ParseInt(d.DDB["ddb.geometry.sectors"], 10, 64)
	return g, errs[0] == nil && errs[1] == nil && errs[2] == nil
}

// HasParent reports a delta disk: a snapshot that needs its parent.
func (d *Descriptor) HasParent() bool {
	return d.ParentCID != NoParent || d.ParentFileNameHint != ""
}

// Supported says why this package cannot read the disk, or nil.
func (d *Descriptor) Supported() error {
	if d.HasParent() {
		return unsupportedf("a delta disk whose parent is %q (parentCID %08x); consolidate its snapshots first",
			d.ParentFileNameHint, d.ParentCID)
	}
	switch d.CreateType {
	case "vmfsSparse", "seSparse":
		return unsupportedf("createType %q (snapshot formats); consolidate the disk first", d.CreateType)
	case "vmfsRaw", "vmfsRawDeviceMap", "vmfsPassthroughRawDeviceMap", "fullDevice", "partitionedDevice":
		return unsupportedf("createType %q: the data is on a device, not in the VMDK", d.CreateType)
	}
	for _, e := range d.Extents {
		if err := e.supported(); err != nil {
			return err
		}
	}
	return nil
}

func (e ExtentDesc) supported() error {
	switch {
	case e.Access == "NOACCESS":
		return unsupportedf("extent %q is NOACCESS", e.File)
	case e.Type == "FLAT" || e.Type == "VMFS" || e.Type == "SPARSE" || e.Type == "ZERO":
		return nil
	case e.Type == "VMFSSPARSE" || e.Type == "SESPARSE":
		return unsupportedf("%s extent %q (a snapshot); consolidate the disk first", e.Type, e.File)
	case e.Type == "VMFSRDM" || e.Type == "VMFSRAW":
		return unsupportedf("%s extent %q: a raw device mapping", e.Type, e.File)
	}
	return unsupportedf("extent type %q", e.Type)
}

// isDescriptor reports text that starts like a descriptor file.
func isDescriptor(b []byte) bool {
	if len(b) > 4096 {
		b = b[:4096]
	}
	for len(b) > 0 {
		line, rest, _ := bytes.Cut(b, []byte("\n"))
		line = bytes.TrimSpace(line)
		switch {
		case bytes.HasPrefix(line, []byte("# Disk DescriptorFile")), bytes.HasPrefix(line, []byte("version=")):
			return true
		case len(line) > 0 && line[0] != '#':
			return false
		}
		b = rest
	}
	return false
}
