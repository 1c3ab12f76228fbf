package export

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// cacheImage is the cache image of disk and its format.
func cacheImage(dir, disk string) (string, string, error) {
	for _, f := range []string{cache.FormatQcow2, cache.FormatRaw} {
		p := filepath.Join(dir, disk+"."+f)
		if _, err := os.Stat(p); err == nil {
			return p, f, nil
		}
	}
	return "", "", fmt.Errorf("no cache image of disk %s in %s: %w", disk, dir, fs.ErrNotExist)
}

// imageOpts opens a cache image as exactly size bytes: a compressed
// cache image is rounded up to whole clusters.
func imageOpts(path, format string, size int64) string {
	esc := strings.ReplaceAll(path, ",", ",,")
	return fmt.Sprintf("driver=raw,size=%d,file.driver=%s,file.file.driver=file,file.file.filename=%s", size, format, esc)
}

// exportDisk converts one disk's cache image into dir and checks that
// the file reads back as the cache does.
func (d *Driver) exportDisk(ctx context.Context, job *runner.Job, dir string, td *ferryv1.TargetDisk, rate int64) (*bundle.Disk, error) {
	e := job.Assignment.GetJob().GetExport()
	src, srcFormat, err := cacheImage(job.CacheDir, td.GetSourceDisk())
	if err != nil {
		return nil, err
	}
	size := td.GetSizeBytes()
	ext, fmtArgs := formatOf(e.GetFormat(), e.GetCompress())
	name := td.GetSourceDisk() + "." + ext
	out := filepath.Join(dir, name)
	job.Progress.SetTotal(td.GetSourceDisk(), size)
	argv := ConvertArgs(imageOpts(src, srcFormat, size), out, fmtArgs, rate)
	// The SHA-256 of the disk's content is taken from the cache beside
	// the conversion, which it costs as much as on a big disk (every byte
	// is hashed, zeroes too); qemu-img compare then shows the file holds
	// the same content.
	hctx, cancelHash := context.WithCancel(ctx)
	var hash struct {
		sum  string
		size int64
		err  error
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		hash.sum, hash.size, hash.err = bundle.HashContent(hctx, imageOpts(src, srcFormat, size), bundle.ImageOpts)
	}()
	defer func() { cancelHash(); wg.Wait() }()
	start := time.Now()
	if err := convert(ctx, argv, func(done int64) { job.Progress.Set(td.GetSourceDisk(), done*size/10000) }); err != nil {
		return nil, err
	}
	job.Progress.Set(td.GetSourceDisk(), size)
	job.Log.Info("disk exported", "disk", td.GetSourceDisk(), "file", name, "seconds", time.Since(start).Seconds())
	if err := syncFile(out); err != nil {
		return nil, err
	}
	if err := compareImages(ctx, src, srcFormat, out, ext); err != nil {
		return nil, err
	}
	if got, err := virtualSize(ctx, out, ext); err != nil || got != size {
		return nil, fmt.Errorf("%s: virtual size %d bytes, the disk %d (%v)", name, got, size, err)
	}
	wg.Wait()
	if hash.err != nil {
		return nil, fmt.Errorf("read the cache image of %s: %w", td.GetSourceDisk(), hash.err)
	}
	if hash.size != size {
		return nil, fmt.Errorf("the cache image of %s holds %d bytes, the disk %d", td.GetSourceDisk(), hash.size, size)
	}
	got := hash.sum
	job.Progress.SetVerified(td.GetSourceDisk())
	fsum, fbytes, err := bundle.HashFile(out)
	if err != nil {
		return nil, err
	}
	return &bundle.Disk{File: name, SourceDisk: td.GetSourceDisk(), Format: ext, SizeBytes: size, SHA256: got, FileSHA256: fsum, FileBytes: fbytes}, nil
}

// virtualSize is what qemu-img info says of an image's size.
func virtualSize(ctx context.Context, path, format string) (int64, error) {
	b, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", "-f", format, path).Output()
	if err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info.VirtualSize, nil
}

// compareImages runs qemu-img compare of the cache image and the
// exported file: equal content, the cache's tail past the disk (a
// compressed image's last cluster) reading as zeroes.
func compareImages(ctx context.Context, cacheImage, cacheFormat, out, format string) error {
	cmd := exec.CommandContext(ctx, "qemu-img", "compare", "-q", "-f", cacheFormat, "-F", format, cacheImage, out)
	b, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return fmt.Errorf("%s does not read as the cache image %s does", filepath.Base(out), cacheImage)
	}
	return fmt.Errorf("qemu-img compare %s %s: %w: %s", cacheImage, out, err, strings.TrimSpace(string(b)))
}

// ConvertArgs is the qemu-img command that writes out from an image
// given as --image-opts: the target format's options, a rate limit in
// bytes per second when rate > 0, progress on.
func ConvertArgs(srcOpts, out string, fmtArgs []string, rate int64) []string {
	argv := []string{"qemu-img", "convert", "-p", "--image-opts", srcOpts}
	argv = append(argv, fmtArgs...)
	if rate > 0 {
		argv = append(argv, "-r", strconv.FormatInt(rate, 10))
	}
	return append(argv, out)
}

var progressRe = regexp.MustCompile(`\((\d+)\.(\d\d)/100%\)`)

// convert runs argv, passing progress in hundredths of a percent.
func convert(ctx context.Context, argv []string, progress func(int64)) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Split(splitCR)
	for sc.Scan() {
		if m := progressRe.FindStringSubmatch(sc.Text()); m != nil {
			whole, _ := strconv.ParseInt(m[1], 10, 64)
			frac, _ := strconv.ParseInt(m[2], 10, 64)
			progress(whole*100 + frac)
		}
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("qemu-img convert: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// splitCR splits on \r and \n: qemu-img rewrites its progress line.
func splitCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// newManifest describes the job's VM: the source VM as recorded in the
// cache, and the target VM it makes, in the API's schema.
func newManifest(a *agentv1.Assignment, vm *ferryv1.SourceVm, version string, now time.Time) (*bundle.Manifest, error) {
	mo := protojson.MarshalOptions{UseProtoNames: false}
	vmJSON, err := mo.Marshal(vm)
	if err != nil {
		return nil, err
	}
	tgt, err := mo.Marshal(TargetOf(vm, a.GetJob().GetTarget().GetDisks()))
	if err != nil {
		return nil, err
	}
	src := a.GetSource()
	addr := src.GetKvm().GetAddress()
	if addr == "" {
		addr = src.GetVcenter().GetAddress()
	}
	return &bundle.Manifest{Format: bundle.Format, FerryVersion: version, CreateTime: now.UTC().Format(time.RFC3339),
		Job: a.GetJob().GetName(), Source: bundle.Source{Name: src.GetName(), Type: src.GetType().String(), Address: addr, VM: a.GetJob().GetSourceVm()},
		VM: vmJSON, Target: tgt}, nil
}

// TargetOf is the target VM a bundle describes: the source VM's name,
// vCPUs, memory, firmware, OS type, machine family, CD-ROM drives, its
// disks in the job's order with their buses, and its NICs with their
// MACs and models (no network: the importing job maps them).
func TargetOf(vm *ferryv1.SourceVm, disks []*ferryv1.TargetDisk) *ferryv1.TargetVm {
	t := &ferryv1.TargetVm{VmName: vm.GetName(), Cpus: vm.GetCpus(), MemoryBytes: vm.GetMemoryBytes(), Firmware: vm.GetFirmware(),
		OsType: vm.GetOsType(), CdromCount: vm.GetCdromCount()}
	switch {
	case strings.Contains(vm.GetMachineType(), "q35"):
		t.MachineType = ferryv1.MachineType_MACHINE_TYPE_Q35
	case strings.Contains(vm.GetMachineType(), "i440fx"), strings.HasPrefix(vm.GetMachineType(), "pc"):
		t.MachineType = ferryv1.MachineType_MACHINE_TYPE_PC
	}
	boot := bootDisk(vm)
	for _, d := range disks {
		t.Disks = append(t.Disks, &ferryv1.TargetDisk{SourceDisk: d.GetSourceDisk(), DisplayName: d.GetDisplayName(), SizeBytes: d.GetSizeBytes(),
			Bus: busOf(sourceDisk(vm, d.GetSourceDisk()).GetBus()), Boot: d.GetSourceDisk() == boot})
	}
	for _, n := range vm.GetNics() {
		t.Nics = append(t.Nics, &ferryv1.TargetNic{SourceMac: n.GetMac(), Mac: n.GetMac(), Model: n.GetModel()})
	}
	return t
}

// bootDisk is the disk the VM boots: the lowest boot order, else the first.
func bootDisk(vm *ferryv1.SourceVm) string {
	best, order := "", int32(0)
	for _, d := range vm.GetDisks() {
		if o := d.GetBootOrder(); o > 0 && (order == 0 || o < order) {
			best, order = d.GetTarget(), o
		}
	}
	if best == "" && len(vm.GetDisks()) > 0 {
		best = vm.GetDisks()[0].GetTarget()
	}
	return best
}

func sourceDisk(vm *ferryv1.SourceVm, target string) *ferryv1.SourceDisk {
	for _, d := range vm.GetDisks() {
		if d.GetTarget() == target {
			return d
		}
	}
	return nil
}

// busOf maps a libvirt bus onto the API's.
func busOf(bus string) ferryv1.DiskBus {
	switch bus {
	case "virtio":
		return ferryv1.DiskBus_DISK_BUS_VIRTIO_BLK
	case "scsi":
		return ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI
	case "sata":
		return ferryv1.DiskBus_DISK_BUS_SATA
	case "ide":
		return ferryv1.DiskBus_DISK_BUS_IDE
	}
	return ferryv1.DiskBus_DISK_BUS_UNSPECIFIED
}

// fillDisk adds what the source says of a disk to its manifest entry.
func fillDisk(d *bundle.Disk, vm *ferryv1.SourceVm, td *ferryv1.TargetDisk, i int) {
	d.Bus = sourceDisk(vm, td.GetSourceDisk()).GetBus()
	d.Boot = td.GetSourceDisk() == bootDisk(vm)
	d.Order = i
}
