package vcsimtest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/pkg/vmdk"
)

// CBTBlock is the granularity of the simulator's changed-block tracking:
// a changed area starts and ends on it (or at the disk's end).
const CBTBlock = 64 << 10

// CBTMaxAnswer is the most of a disk one QueryChangedDiskAreas answer
// covers, as vSphere answers in parts: the caller asks again from
// StartOffset+Length.
const CBTMaxAnswer = 4 << 20

// cbt is the simulator's changed-block tracking, which govmomi's simulator
// lacks. When a snapshot of a VM with changeTrackingEnabled is taken, the
// content of each of its disks is summed block by block and the sums are
// kept under a new change id, which the snapshot's disk backing carries
// (as vSphere's does). QueryChangedDiskAreas against an earlier change id
// answers the blocks whose sums differ: what was really written into the
// disk's files in between, however it was written. Against "*" it answers
// every block that is not all zeroes (the allocated areas).
type cbt struct {
	sim *Sim

	mu     sync.Mutex
	n      int
	epochs map[string][][sha256.Size]byte // block sums by change id
	sizes  map[string]int64               // disk size by change id
	snaps  map[string]map[int32]string    // change id by snapshot and disk key
	// queries records the questions asked, in order.
	queries []CBTQuery
	// failNext makes the next queries fail.
	failNext int
}

// CBTQuery is one QueryChangedDiskAreas the simulator answered.
type CBTQuery struct {
	Snapshot, ChangeID string
	DeviceKey          int32
	StartOffset        int64
	// Areas and Bytes are what it answered.
	Areas int
	Bytes int64
}

func newCBT(s *Sim) *cbt {
	return &cbt{sim: s, epochs: map[string][][sha256.Size]byte{}, sizes: map[string]int64{}, snaps: map[string]map[int32]string{}}
}

// CBTQueries returns the QueryChangedDiskAreas calls answered so far.
func (s *Sim) CBTQueries() []CBTQuery {
	s.cbt.mu.Lock()
	defer s.cbt.mu.Unlock()
	return append([]CBTQuery(nil), s.cbt.queries...)
}

// FailCBTQueries makes the next n QueryChangedDiskAreas calls fail.
func (s *Sim) FailCBTQueries(n int) {
	s.cbt.mu.Lock()
	defer s.cbt.mu.Unlock()
	s.cbt.failNext = n
}

// handler gives the calling session, when it first asks
// QueryChangedDiskAreas of a VM or takes a snapshot of it, a session-local
// view of the VM that answers it and guards its snapshots (snapguard.go;
// a session's objects come before the registry's). The view embeds the
// simulator's VM, so every other method works as before, and the registry
// keeps the simulator's own object, whose type its snapshot code asserts.
func (c *cbt) handler(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	switch {
	case ctx.Session == nil:
		return nil, nil
	case m.Name == "QueryChangedDiskAreas", m.Name == "CreateSnapshot_Task", m.Name == "CreateSnapshotEx_Task":
	default:
		return nil, nil
	}
	if _, ok := ctx.Session.Registry.Get(m.This).(*cbtVM); ok {
		return nil, nil
	}
	vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		return nil, nil
	}
	ctx.Session.Put(&cbtVM{VirtualMachine: vm, cbt: c})
	return nil, nil
}

// cbtVM is a session's view of a VM that answers QueryChangedDiskAreas
// and refuses a snapshot on top of another.
type cbtVM struct {
	*simulator.VirtualMachine
	cbt *cbt
}

func (v *cbtVM) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	info, fault := v.cbt.query(ctx, req)
	if fault != nil {
		msg := ""
		if f, ok := fault.(*types.SystemError); ok {
			msg = f.Reason
		}
		body.Fault_ = simulator.Fault(msg, fault)
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: info}
	return body
}

func (c *cbt) query(ctx *simulator.Context, req *types.QueryChangedDiskAreas) (types.DiskChangeInfo, types.BaseMethodFault) {
	vm, ok := ctx.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		return types.DiskChangeInfo{}, &types.ManagedObjectNotFound{Obj: req.This}
	}
	if req.Snapshot == nil {
		return types.DiskChangeInfo{}, &types.InvalidArgument{InvalidProperty: "snapshot"}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failNext > 0 {
		c.failNext--
		return types.DiskChangeInfo{}, &types.SystemError{Reason: "injected QueryChangedDiskAreas failure"}
	}
	if vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
		return types.DiskChangeInfo{}, &types.InvalidState{}
	}
	now, ok := c.snaps[req.Snapshot.Value][req.DeviceKey]
	if !ok {
		return types.DiskChangeInfo{}, &types.InvalidArgument{InvalidProperty: "deviceKey"}
	}
	cur := c.epochs[now]
	var base [][sha256.Size]byte
	if req.ChangeId != "*" {
		if base, ok = c.epochs[req.ChangeId]; !ok || len(base) != len(cur) {
			return types.DiskChangeInfo{}, &types.InvalidArgument{InvalidProperty: "changeId"}
		}
	}
	size := c.sizeOf(now)
	if req.StartOffset < 0 || req.StartOffset >= size {
		return types.DiskChangeInfo{}, &types.InvalidArgument{InvalidProperty: "startOffset"}
	}
	first := req.StartOffset / CBTBlock
	end := min(size, (first*CBTBlock+CBTMaxAnswer)/CBTBlock*CBTBlock)
	info := types.DiskChangeInfo{StartOffset: first * CBTBlock, Length: end - first*CBTBlock}
	var zero [sha256.Size]byte
	for b := first; b*CBTBlock < end; b++ {
		changed := base == nil && cur[b] != zero || base != nil && cur[b] != base[b]
		if !changed {
			continue
		}
		start, n := b*CBTBlock, min(CBTBlock, size-b*CBTBlock)
		if k := len(info.ChangedArea) - 1; k >= 0 && info.ChangedArea[k].Start+info.ChangedArea[k].Length == start {
			info.ChangedArea[k].Length += n
		} else {
			info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: start, Length: n})
		}
	}
	q := CBTQuery{Snapshot: req.Snapshot.Value, ChangeID: req.ChangeId, DeviceKey: req.DeviceKey, StartOffset: req.StartOffset,
		Areas: len(info.ChangedArea)}
	for _, a := range info.ChangedArea {
		q.Bytes += a.Length
	}
	c.queries = append(c.queries, q)
	return info, nil
}

func (c *cbt) sizeOf(id string) int64 { return c.sizes[id] }

// snapshot records the content of each disk of a new snapshot of a VM
// that tracks changes, and gives the snapshot's disk backings their
// change ids.
func (c *cbt) snapshot(ctx *simulator.Context, snap *simulator.VirtualMachineSnapshot) {
	if snap.Config.ChangeTrackingEnabled == nil || !*snap.Config.ChangeTrackingEnabled {
		return
	}
	for _, dev := range snap.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		sums, err := c.sumDisk(ctx, backing.FileName, disk.CapacityInBytes)
		if err != nil {
			panic(fmt.Sprintf("vcsimtest: changed-block tracking of %s: %v", backing.FileName, err))
		}
		c.mu.Lock()
		c.n++
		id := fmt.Sprintf("52 ferry vcsim/%d", c.n)
		c.epochs[id] = sums
		c.sizes[id] = disk.CapacityInBytes
		if c.snaps[snap.Self.Value] == nil {
			c.snaps[snap.Self.Value] = map[int32]string{}
		}
		c.snaps[snap.Self.Value][disk.Key] = id
		c.mu.Unlock()
		backing.ChangeId = id
	}
}

// sumDisk sums each CBTBlock of a disk's content.
func (c *cbt) sumDisk(ctx *simulator.Context, file string, size int64) ([][sha256.Size]byte, error) {
	r, err := c.sim.openDisk(ctx.Map, file, size)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	sums := make([][sha256.Size]byte, (size+CBTBlock-1)/CBTBlock)
	buf := make([]byte, CBTBlock)
	zero := make([]byte, CBTBlock)
	for i := range sums {
		n := min(CBTBlock, size-int64(i)*CBTBlock)
		if _, err := r.ReadAt(buf[:n], int64(i)*CBTBlock); err != nil && err != io.EOF {
			return nil, err
		}
		if !bytes.Equal(buf[:n], zero[:n]) {
			sums[i] = sha256.Sum256(buf[:n])
		}
	}
	return sums, nil
}

// flatDisk reads a flat VMDK's content by disk offset: its extents'
// files, zeroes past their ends and in ZERO extents.
type flatDisk struct {
	files   []*os.File
	extents []flatExtent
}

type flatExtent struct {
	start, length, fileOff int64
	file                   int // index into files
}

func (d *flatDisk) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	for _, e := range d.extents {
		lo, hi := max(off, e.start), min(off+int64(len(p)), e.start+e.length)
		if lo >= hi {
			continue
		}
		if _, err := d.files[e.file].ReadAt(p[lo-off:hi-off], e.fileOff+lo-e.start); err != nil && err != io.EOF {
			return 0, err
		}
	}
	return len(p), nil
}

func (d *flatDisk) Close() error {
	for _, f := range d.files {
		f.Close()
	}
	return nil
}

// openDisk opens the content of a disk named by its descriptor's
// datastore path: a flat disk (a descriptor naming FLAT extents), or a raw
// file taken as the content itself.
func (s *Sim) openDisk(m *simulator.Registry, file string, size int64) (*flatDisk, error) {
	local, err := s.localPath(m, file)
	if err != nil {
		return nil, err
	}
	text, err := os.ReadFile(local)
	if err != nil {
		return nil, err
	}
	d := &flatDisk{}
	if !bytes.HasPrefix(text, []byte("# Disk DescriptorFile")) {
		f, err := os.Open(local)
		if err != nil {
			return nil, err
		}
		d.files = append(d.files, f)
		d.extents = append(d.extents, flatExtent{length: size})
		return d, nil
	}
	desc, err := vmdk.ParseDescriptor(text)
	if err != nil {
		return nil, err
	}
	var start int64
	for _, e := range desc.Extents {
		n := e.Sectors * vmdk.SectorSize
		switch e.Type {
		case "FLAT", "VMFS":
			f, err := os.Open(filepath.Join(filepath.Dir(local), e.File))
			if err != nil {
				d.Close()
				return nil, err
			}
			d.files = append(d.files, f)
			d.extents = append(d.extents, flatExtent{start: start, length: n, fileOff: e.Offset * vmdk.SectorSize, file: len(d.files) - 1})
		case "ZERO":
		default:
			d.Close()
			return nil, fmt.Errorf("the simulator tracks changes of flat disks only, not of %s extents", e.Type)
		}
		start += n
	}
	return d, nil
}

// localPath is the file behind a datastore path.
func (s *Sim) localPath(m *simulator.Registry, file string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(file) {
		return "", fmt.Errorf("%q is not a datastore path", file)
	}
	for _, e := range m.All("Datastore") {
		if ds := e.(*simulator.Datastore); ds.Name == p.Datastore {
			return filepath.Join(ds.Info.GetDatastoreInfo().Url, filepath.FromSlash(path.Clean(p.Path))), nil
		}
	}
	return "", fmt.Errorf("no datastore %q", p.Datastore)
}

// WriteDisk writes p at off into the content of a VM's disk (the disk
// with device key key, a flat disk): into its extent files, as a guest's
// writes would land.
func (s *Sim) WriteDisk(t testing.TB, vm types.ManagedObjectReference, key int32, p []byte, off int64) {
	t.Helper()
	obj := s.Model.Map().Get(vm).(*simulator.VirtualMachine)
	var file string
	var size int64
	for _, dev := range obj.Config.Hardware.Device {
		if d, ok := dev.(*types.VirtualDisk); ok && d.Key == key {
			file = d.Backing.(types.BaseVirtualDeviceFileBackingInfo).GetVirtualDeviceFileBackingInfo().FileName
			size = d.CapacityInBytes
		}
	}
	if file == "" {
		t.Fatalf("VM %s has no disk %d", vm.Value, key)
	}
	if off < 0 || off+int64(len(p)) > size {
		t.Fatalf("write at %d+%d past the end of disk %d (%d bytes)", off, len(p), key, size)
	}
	d, err := s.openDisk(s.Model.Map(), file, size)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, e := range d.extents {
		lo, hi := max(off, e.start), min(off+int64(len(p)), e.start+e.length)
		if lo >= hi {
			continue
		}
		f, err := os.OpenFile(d.files[e.file].Name(), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteAt(p[lo-off:hi-off], e.fileOff+lo-e.start)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
