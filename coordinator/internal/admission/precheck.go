package admission

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	"github.com/ferry-v2v/ferry/pkg/kvmver"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/targetspec"
)

// minSourceVersion is the oldest vCenter and ESXi release Ferry reads.
var minSourceVersion = [2]int{5, 0}

// precheck returns every reason, one line each naming the job and its VM,
// why the batch cannot migrate as it stands: a migration server of another
// type than the source, and against the source's synced inventory a VM the
// inventory does not know (VMware), a target disk or NIC naming a source
// disk or MAC the VM does not have, a template, a host in maintenance
// mode, a disk outside snapshots (independent modes), a vCenter/ESXi
// version pair that differs or is older than 5.0, and a KVM source whose
// libvirt or QEMU is too old for the copy method the VM's state needs
// (checkKVMVersions). A VMware source never
// synced is synced first when an agent can reach it; with resync, so is a
// source whose inventory lacks a VM of the batch (made since the last
// sync). Preview passes false: it writes nothing it need not. Syncs are
// kept in syncs, for the caller to record.
func (a *Admission) precheck(ctx context.Context, refs *batchRefs, jobs []*ferryv1.MigrationJob, resync bool, syncs *batchSyncs) []string {
	var lines []string
	src, srv := refs.source, refs.server
	if srv.GetType() != src.GetType() && src.GetType() != ferryv1.Platform_PLATFORM_BUNDLE {
		lines = append(lines, fmt.Sprintf("migration_server: %s is a %s migration server but source %s is %s; use a %s migration server",
			srv.GetName(), PlatformName(srv.GetType()), src.GetName(), PlatformName(src.GetType()), PlatformName(src.GetType())))
	}
	vmware := src.GetType() == ferryv1.Platform_PLATFORM_VMWARE
	// A source whose inventory must be read before its VMs can be checked.
	mustSync := vmware || src.GetType() == ferryv1.Platform_PLATFORM_BUNDLE
	vms := make([]string, len(jobs))
	for i, j := range jobs {
		vms[i] = j.GetSourceVm()
	}
	inv, ok := syncs.inventory(src.GetName())
	if (!ok && mustSync || resync && ok && !hasVMs(inv, vms)) && a.agents != nil && a.agents.Connected(srv.GetHost()) {
		// Never synced, or a VM made since the last sync: read it now.
		if err := syncs.sync(ctx, src.GetName(), srv.GetName()); err != nil {
			a.log.Info("could not sync a source before creating jobs", "source", src.GetName(), "err", err)
		}
		inv, ok = syncs.inventory(src.GetName())
	}
	if !ok {
		if mustSync {
			lines = append(lines, fmt.Sprintf("source %s was never synced%s, so its VMs cannot be checked; sync it first (ferryctl source sync)",
				src.GetName(), syncs.lastError(src)))
		}
		return lines
	}
	for i, j := range jobs {
		p := fmt.Sprintf("jobs[%d]", i)
		lines = append(lines, checkSourceVM(p, j, inv, vmware)...)
		lines = append(lines, checkVirtioWin(p, j, inv, src, srv)...)
		if src.GetType() == ferryv1.Platform_PLATFORM_KVM {
			lines = append(lines, a.checkKVMVersions(p, j, inv)...)
		}
		if src.GetType() != ferryv1.Platform_PLATFORM_VMWARE {
			if vm, _ := findInventoryVM(inv, j.GetSourceVm()); vm != nil {
				stampBootDisk(j.GetTarget(), vm)
				lines = append(lines, checkWarm(p, j, vm)...)
			}
		}
	}
	return lines
}

// checkWarm refuses a warm job whose KVM VM cannot be copied in rounds
// (kvmver.WarmRefusal), saying why.
func checkWarm(p string, j *ferryv1.MigrationJob, vm *ferryv1.SourceVm) []string {
	if j.GetOptions().GetMode() != ferryv1.MigrationMode_MIGRATION_MODE_WARM {
		return nil
	}
	copies := map[string]bool{}
	for _, d := range j.GetTarget().GetDisks() {
		copies[d.GetSourceDisk()] = true
	}
	why := kvmver.WarmRefusal(vm, func(t string) bool { return copies[t] })
	if why == "" {
		return nil
	}
	return []string{fmt.Sprintf("%s.options.mode (VM %s): %s", p, vm.GetName(), why)}
}

// checkKVMVersions applies the agent's version rules (pkg/kvmver) to the
// libvirt and QEMU versions of the KVM source's last sync: libvirt 1.2.16
// when a source disk the job copies is an RBD image or the target storage
// is Ceph, and a copy method for the VM's synced state (kvmver.Choose): a
// source below libvirt 1.2.9 or QEMU 1.1 is refused, a running or paused
// VM without the backup API gets the snapshot method (a note, not a
// failed check), and a shut-off VM needs only what the cold copy needs.
// A version the sync did not record (an inventory from an older agent) is
// left to the agent, which checks again when the job starts.
func (a *Admission) checkKVMVersions(p string, j *ferryv1.MigrationJob, inv *ferryv1.SourceInventory) []string {
	lib, libOK := kvmver.Parse(inv.GetProduct().GetVersion())
	qemu, qemuOK := kvmver.Parse(inv.GetProduct().GetQemuVersion())
	if !libOK || !qemuOK {
		return nil
	}
	var disks []*ferryv1.SourceDisk
	vm, _ := findInventoryVM(inv, j.GetSourceVm())
	if vm != nil {
		p = fmt.Sprintf("%s (VM %s)", p, vm.GetName())
		disks = vm.GetDisks()
	}
	copies := map[string]bool{}
	for _, d := range j.GetTarget().GetDisks() {
		copies[d.GetSourceDisk()] = true
	}
	ps, _ := a.ledger.PrimaryStorage(j.GetTarget().GetPrimaryStorage())
	ceph := kvmver.CephReason(ps.GetType() == ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, disks,
		func(target string) bool { return copies[target] })
	var lines []string
	if err := kvmver.CheckCeph(lib, ceph); err != nil {
		lines = append(lines, fmt.Sprintf("%s: source %s: %s; upgrade the source host first", p, inv.GetSource(),
			strings.TrimPrefix(err.Error(), kvmver.ErrTooOld.Error()+": ")))
	}
	c := kvmver.Choose(lib, qemu, vm.GetState())
	if c.Method == kvmver.MethodRefused {
		lines = append(lines, fmt.Sprintf("%s: source %s: %s; upgrade the source host first", p, inv.GetSource(), c))
	}
	return lines
}

// copyMethodNotes says for each job of a KVM source whose copy method can
// run which it is and why, from the versions and VM state of the source's
// last sync ("jobs[0] (VM web): source sources/kvm: libvirt 9.0.0, QEMU
// 7.2.0: backup API because …"); checkKVMVersions lists the ones that
// cannot run as failed checks.
func (a *Admission) copyMethodNotes(src *ferryv1.Source, jobs []*ferryv1.MigrationJob) []string {
	if src.GetType() != ferryv1.Platform_PLATFORM_KVM {
		return nil
	}
	inv, ok := a.ledger.SourceInventory(src.GetName())
	if !ok {
		return nil
	}
	lib, libOK := kvmver.Parse(inv.GetProduct().GetVersion())
	qemu, qemuOK := kvmver.Parse(inv.GetProduct().GetQemuVersion())
	if !libOK || !qemuOK {
		return nil
	}
	var notes []string
	for i, j := range jobs {
		p := fmt.Sprintf("jobs[%d]", i)
		vm, _ := findInventoryVM(inv, j.GetSourceVm())
		if vm != nil {
			p = fmt.Sprintf("%s (VM %s)", p, vm.GetName())
		}
		c := kvmver.Choose(lib, qemu, vm.GetState())
		if notRoot(inv.GetCapabilities()) {
			c = kvmver.NotRoot(c, src.GetKvm().GetUser())
		}
		if c.Err == nil {
			notes = append(notes, fmt.Sprintf("%s: source %s: %s", p, inv.GetSource(), c))
		}
	}
	return notes
}

// notRoot says whether the last sync of a KVM source found its SSH user
// without the live copy (the backup API), which only root has: the agent
// then copies a running VM by the snapshot method (kvmver.NotRoot).
func notRoot(caps []*ferryv1.SourceCapability) bool {
	for _, c := range caps {
		if c.GetKind() == ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIVE_COPY {
			return !c.GetAvailable()
		}
	}
	return false
}

// checkVMsKnown is NOT_FOUND for the first job whose VM the synced
// inventory of a VMware source does not list (precheck has synced it
// when it could). A KVM inventory synced by an older agent lists only
// running and paused VMs, so there the agent checks. Preview reports it as a pre-check line instead.
func checkVMsKnown(refs *batchRefs, jobs []*ferryv1.MigrationJob, syncs *batchSyncs) error {
	if refs.source.GetType() != ferryv1.Platform_PLATFORM_VMWARE {
		return nil
	}
	inv, ok := syncs.inventory(refs.source.GetName())
	if !ok {
		return nil
	}
	for i, j := range jobs {
		if vm, why := findInventoryVM(inv, j.GetSourceVm()); vm == nil && why == notInInventory {
			return &validate.FieldError{Code: codes.NotFound, Field: fmt.Sprintf("jobs[%d].source_vm", i), Msg: validate.Sprintf(
				"VM %q is not in the inventory of %s synced at %s; sync the source first if the VM is new",
				j.GetSourceVm(), inv.GetSource(), inv.GetSyncTime().AsTime().Format(time.RFC3339))}
		}
	}
	return nil
}

// notInInventory is findInventoryVM's reason for a VM it does not know.
const notInInventory = "is not"

// checkSourceVM checks one job's VM against the inventory.
func checkSourceVM(p string, j *ferryv1.MigrationJob, inv *ferryv1.SourceInventory, vmware bool) []string {
	vm, why := findInventoryVM(inv, j.GetSourceVm())
	if vm == nil {
		if !vmware {
			return nil // an older agent's KVM inventory lists no shut-off VMs; the agent checks
		}
		return []string{fmt.Sprintf("%s: VM %q %s in the inventory of %s synced at %s; sync the source first if the VM is new",
			p, j.GetSourceVm(), why, inv.GetSource(), inv.GetSyncTime().AsTime().Format("2006-01-02T15:04:05Z07:00"))}
	}
	lines := checkSpecAgainstVM(p, j, vm)
	job := p
	p = fmt.Sprintf("%s (VM %s, %s)", p, vm.GetName(), vm.GetId())
	if vm.GetTemplate() {
		lines = append(lines, p+": the VM is a template, which cannot be migrated; convert it to a VM first")
	}
	var host *ferryv1.SourceHost
	for _, h := range inv.GetHosts() {
		if h.GetName() == vm.GetHost() && vm.GetHost() != "" {
			host = h
		}
	}
	if host.GetMaintenanceMode() {
		lines = append(lines, fmt.Sprintf("%s: its host %s is in maintenance mode; take the host out of maintenance mode first", p, host.GetName()))
	}
	for _, d := range selectedDisks(vm, j) {
		if strings.HasPrefix(d.GetDiskMode(), "independent") {
			lines = append(lines, fmt.Sprintf("%s: disk %s is in %s mode, which snapshots leave out; make it dependent (persistent) first",
				p, d.GetTarget(), d.GetDiskMode()))
		}
	}
	if vmware {
		lines = append(lines, checkVersions(p, inv.GetProduct(), host)...)
		lines = append(lines, checkWarmCBT(job, j, vm)...)
	}
	return lines
}

// checkWarmCBT refuses a warm job of a VMware VM whose changed-block
// tracking is off, as the last sync saw it, unless the job lets Ferry turn
// it on (options.enable_cbt): the agent would fail its first round naming
// the option, after the preview said the batch fits.
func checkWarmCBT(p string, j *ferryv1.MigrationJob, vm *ferryv1.SourceVm) []string {
	o := j.GetOptions()
	if o.GetMode() != ferryv1.MigrationMode_MIGRATION_MODE_WARM || vm.GetCbtEnabled() || o.GetEnableCbt() {
		return nil
	}
	return []string{fmt.Sprintf("%s.options.enable_cbt (VM %s, %s): changed-block tracking is off on the VM, and a warm job "+
		"copies only what it tracked between rounds; set enable_cbt to let Ferry turn it on, or turn it on in vSphere and sync "+
		"the source", p, vm.GetName(), vm.GetId())}
}

// checkSpecAgainstVM refuses a target disk or NIC naming a source disk or
// source MAC the VM does not have: the agent would find out only once the
// job runs, after the preview said the batch fits.
func checkSpecAgainstVM(p string, j *ferryv1.MigrationJob, vm *ferryv1.SourceVm) []string {
	var lines, disks, macs []string
	for _, d := range vm.GetDisks() {
		disks = append(disks, d.GetTarget())
	}
	for _, n := range vm.GetNics() {
		macs = append(macs, strings.ToLower(n.GetMac()))
	}
	for k, d := range j.GetTarget().GetDisks() {
		if !slices.Contains(disks, d.GetSourceDisk()) {
			lines = append(lines, fmt.Sprintf("%s.target.disks[%d].source_disk: source VM %s has no disk %q (it has %s)",
				p, k, vm.GetName(), d.GetSourceDisk(), listOrNone(disks)))
		}
	}
	for k, n := range j.GetTarget().GetNics() {
		if n.GetSourceMac() != "" && !slices.Contains(macs, strings.ToLower(n.GetSourceMac())) {
			lines = append(lines, fmt.Sprintf("%s.target.nics[%d].source_mac: source VM %s has no NIC with MAC %s (it has %s)",
				p, k, vm.GetName(), n.GetSourceMac(), listOrNone(macs)))
		}
	}
	return lines
}

func listOrNone(items []string) string {
	if len(items) == 0 {
		return "none"
	}
	return strings.Join(items, ", ")
}

// hasVMs reports whether inv knows every VM of refs.
func hasVMs(inv *ferryv1.SourceInventory, refs []string) bool {
	for _, ref := range refs {
		if vm, _ := findInventoryVM(inv, ref); vm == nil {
			return false
		}
	}
	return true
}

// findInventoryVM finds a VM by id, or by name when one VM alone has it.
func findInventoryVM(inv *ferryv1.SourceInventory, ref string) (*ferryv1.SourceVm, string) {
	var byName []*ferryv1.SourceVm
	for _, vm := range inv.GetVms() {
		if vm.GetId() == ref || vm.GetUuid() == ref {
			return vm, ""
		}
		if vm.GetName() == ref {
			byName = append(byName, vm)
		}
	}
	switch len(byName) {
	case 0:
		return nil, notInInventory
	case 1:
		return byName[0], ""
	}
	return nil, fmt.Sprintf("names %d VMs; name it by its id,", len(byName))
}

// selectedDisks are the VM's disks the job takes: those its target lists
// (by disk key), or all of them.
func selectedDisks(vm *ferryv1.SourceVm, j *ferryv1.MigrationJob) []*ferryv1.SourceDisk {
	want := map[string]bool{}
	for _, d := range j.GetTarget().GetDisks() {
		want[d.GetSourceDisk()] = true
	}
	var out []*ferryv1.SourceDisk
	for _, d := range vm.GetDisks() {
		if len(want) == 0 || want[d.GetTarget()] {
			out = append(out, d)
		}
	}
	return out
}

// checkVersions refuses a vCenter or ESXi older than 5.0, and an ESXi
// host whose major.minor differs from its vCenter's.
func checkVersions(p string, product *ferryv1.SourceProduct, host *ferryv1.SourceHost) []string {
	var lines []string
	vc, vcOK := parseVersion(product.GetVersion())
	isVC := product.GetApiType() != "HostAgent"
	what := "vCenter"
	if !isVC {
		what = "ESXi server"
	}
	switch {
	case !vcOK:
		lines = append(lines, fmt.Sprintf("%s: the source's %s version %q cannot be read; sync the source again", p, what, product.GetVersion()))
	case older(vc, minSourceVersion):
		lines = append(lines, fmt.Sprintf("%s: the source's %s is version %s; %d.%d or newer is needed", p, what, product.GetVersion(),
			minSourceVersion[0], minSourceVersion[1]))
	}
	if host == nil || !isVC {
		return lines
	}
	hv, hostOK := parseVersion(host.GetVersion())
	switch {
	case !hostOK:
		lines = append(lines, fmt.Sprintf("%s: the version %q of ESXi host %s cannot be read; sync the source again", p, host.GetVersion(), host.GetName()))
	case older(hv, minSourceVersion):
		lines = append(lines, fmt.Sprintf("%s: ESXi host %s is version %s; %d.%d or newer is needed", p, host.GetName(), host.GetVersion(),
			minSourceVersion[0], minSourceVersion[1]))
	}
	if vcOK && hostOK && hv != vc {
		lines = append(lines, fmt.Sprintf("%s: ESXi host %s is version %s but its vCenter is version %s; the major.minor versions must match",
			p, host.GetName(), host.GetVersion(), product.GetVersion()))
	}
	return lines
}

// parseVersion reads the major and minor numbers of "8.0.2".
func parseVersion(s string) ([2]int, bool) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return [2]int{}, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return [2]int{major, minor}, err1 == nil && err2 == nil
}

func older(v, than [2]int) bool { return v[0] < than[0] || (v[0] == than[0] && v[1] < than[1]) }

// precheckError is FAILED_PRECONDITION with one line per failed check.
func precheckError(lines []string) error {
	return validate.Precondition("jobs", "%d pre-check(s) failed; nothing was created:\n%s", len(lines), strings.Join(lines, "\n"))
}

// PlatformName is the lower-case name of a platform: "vmware", "kvm".
func PlatformName(p ferryv1.Platform) string {
	switch p {
	case ferryv1.Platform_PLATFORM_VMWARE:
		return "vmware"
	case ferryv1.Platform_PLATFORM_KVM:
		return "kvm"
	case ferryv1.Platform_PLATFORM_BUNDLE:
		return "bundle"
	}
	return p.String()
}

// stampBootDisk marks, when no target disk boots yet, the one copying the
// source disk a KVM VM boots from (the lowest boot order), so the job and
// its preview say which disk boots and the target boots the same one.
// Without boot orders at the source the first disk boots, as it did there.
func stampBootDisk(t *ferryv1.TargetVm, vm *ferryv1.SourceVm) {
	var boot *ferryv1.TargetDisk
	order := int32(0)
	for _, td := range t.GetDisks() {
		if td.GetBoot() {
			return
		}
		for _, sd := range vm.GetDisks() {
			if sd.GetTarget() == td.GetSourceDisk() && sd.GetBootOrder() > 0 && (order == 0 || sd.GetBootOrder() < order) {
				boot, order = td, sd.GetBootOrder()
			}
		}
	}
	if boot == nil && len(t.GetDisks()) > 0 {
		boot = t.GetDisks()[0]
	}
	if boot != nil {
		boot.Boot = true
	}
}

// checkVirtioWin refuses a Windows guest (the target's os_type, else the
// source VM's platform) converted in PREPARING onto virtio targets when
// the migration server has no virtio_win_iso to install the drivers from.
func checkVirtioWin(p string, j *ferryv1.MigrationJob, inv *ferryv1.SourceInventory, src *ferryv1.Source, srv *ferryv1.MigrationServer) []string {
	if !targetspec.ConvertsGuest(j.GetOptions().GetGuestConversion(), src.GetType()) || srv.GetVirtioWinIso() != "" ||
		!targetspec.VirtioTargets(j.GetTarget()) {
		return nil
	}
	os := j.GetTarget().GetOsType()
	if os == ferryv1.OsType_OS_TYPE_UNSPECIFIED {
		if vm, _ := findInventoryVM(inv, j.GetSourceVm()); vm != nil {
			os = targetspec.Platform(vm)
		}
	}
	if os != ferryv1.OsType_OS_TYPE_WINDOWS && os != ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO {
		return nil
	}
	return []string{fmt.Sprintf("%s.options.guest_conversion: VM %s is a Windows guest with virtio targets, whose drivers the conversion installs "+
		"from the migration server's virtio_win_iso, but %s has none; set it, or give the target os_type OS_TYPE_WINDOWS (SATA, e1000), "+
		"or guest_conversion GUEST_CONVERSION_OFF", p, j.GetSourceVm(), srv.GetName())}
}
