package admission

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Limits of a CreateMigrationJobs request.
const (
	maxJobsPerRequest = 50
	maxCDROMs         = 3
	maxCPUs           = 1024
	maxVMName         = 255
)

// checkBatch checks the request on its own and returns its jobs, named.
func (a *Admission) checkBatch(req *ferryv1.CreateMigrationJobsRequest) ([]*ferryv1.MigrationJob, error) {
	c := &validate.Checker{}
	validate.RequestID(c, req.GetRequestId())
	validate.Ref(c, "source", req.GetSource(), validate.Sources)
	validate.Ref(c, "migration_server", req.GetMigrationServer(), validate.Servers)
	switch n := len(req.GetJobs()); {
	case n == 0:
		c.Add("jobs", "at least one VM is required")
	case n > maxJobsPerRequest:
		c.Add("jobs", "at most %d VMs per request, got %d; split the batch", maxJobsPerRequest, n)
		return nil, c.Err()
	}
	seen := &batchSeen{sourceVMs: map[string]int{}, vmNames: map[string]int{}}
	jobs := make([]*ferryv1.MigrationJob, len(req.GetJobs()))
	for i, spec := range req.GetJobs() {
		j := checkSpec(c, i, spec, seen)
		j.Name = validate.Jobs + "/" + a.newID()
		j.Source = req.GetSource()
		j.MigrationServer = req.GetMigrationServer()
		jobs[i] = j
	}
	return jobs, c.Err()
}

// batchSeen tracks what must be unique within one batch.
type batchSeen struct {
	sourceVMs map[string]int
	vmNames   map[string]int
}

// checkSpec checks one VM of a batch on its own (no ledger lookups) and
// returns the job it becomes, without name or allocations.
func checkSpec(c *validate.Checker, i int, spec *ferryv1.MigrationJobSpec, seen *batchSeen) *ferryv1.MigrationJob {
	p := fmt.Sprintf("jobs[%d]", i)
	job := &ferryv1.MigrationJob{SourceVm: spec.GetSourceVm(), DisplayName: spec.GetDisplayName(), Description: spec.GetDescription()}
	validate.Text(c, p+".display_name", job.DisplayName, validate.MaxDisplayName)
	validate.Description(c, p+".description", job.Description)
	switch vm := spec.GetSourceVm(); {
	case vm == "":
		c.Add(p+".source_vm", "required: the VM's libvirt domain name or UUID, or its vCenter managed object id")
	default:
		validate.Text(c, p+".source_vm", vm, maxVMName)
		if k, dup := seen.sourceVMs[vm]; dup {
			c.Add(p+".source_vm", "VM %q is also jobs[%d]; migrate each VM once per request", vm, k)
		}
		seen.sourceVMs[vm] = i
	}
	job.Options = checkOptions(c, p+".options", spec.GetOptions())
	if spec.GetTarget() == nil {
		c.Add(p+".target", "required: the target VM")
		return job
	}
	job.Target = checkTarget(c, i, spec.GetTarget(), seen)
	if job.Options.GetUseSourceNicAddress() {
		for j, n := range job.Target.GetNics() {
			if n.GetSourceMac() != "" && n.GetMac() != n.GetSourceMac() {
				c.Add(fmt.Sprintf("%s.target.nics[%d].mac", p, j), "%s differs from source_mac %s, but options.use_source_nic_address gives the NIC its source MAC; drop one",
					n.GetMac(), n.GetSourceMac())
			}
		}
	}
	return job
}

func checkOptions(c *validate.Checker, p string, in *ferryv1.MigrationOptions) *ferryv1.MigrationOptions {
	out := proto.Clone(in).(*ferryv1.MigrationOptions)
	if out == nil {
		out = &ferryv1.MigrationOptions{}
	}
	validate.Enum(c, p+".compression", out.GetCompression(), false)
	validate.Enum(c, p+".mode", out.GetMode(), false)
	if out.GetMode() == ferryv1.MigrationMode_MIGRATION_MODE_WARM {
		if d := out.GetPrecopyInterval(); d != nil && (d.CheckValid() != nil || d.AsDuration() < ledger.MinPrecopyInterval) {
			c.Add(p+".precopy_interval", "must be a duration of at least %s, got %v", ledger.MinPrecopyInterval, d.AsDuration())
		}
		if t := out.GetCutoverTime(); t != nil && t.CheckValid() != nil {
			c.Add(p+".cutover_time", "not a valid time: %v", t.CheckValid())
		}
	} else {
		if out.GetPrecopyInterval() != nil {
			c.Add(p+".precopy_interval", "only a warm job (mode WARM) runs precopy rounds; drop it or set mode WARM")
		}
		if out.GetCutoverTime() != nil {
			c.Add(p+".cutover_time", "only a warm job (mode WARM) cuts over; drop it or set mode WARM")
		}
	}
	validate.Enum(c, p+".guest_conversion", out.GetGuestConversion(), false)
	if out.GetMode() == ferryv1.MigrationMode_MIGRATION_MODE_WARM && out.GetGuestConversion() == ferryv1.GuestConversion_GUEST_CONVERSION_ON {
		c.Add(p+".guest_conversion", "a warm job's target follows the source round by round and is not converted; set OFF or AUTO (off for warm jobs), or use mode COLD")
	}
	if out.GetVerifyBoot() && out.AutoStart != nil && !out.GetAutoStart() {
		c.Add(p+".verify_boot", "proving the target boots starts it, but auto_start is false; drop one")
	}
	// An unset auto_start is settled against the source VM's state once
	// the inventory has been read (keepSourceState).
	return out
}

func checkTarget(c *validate.Checker, i int, in *ferryv1.TargetVm, seen *batchSeen) *ferryv1.TargetVm {
	p := fmt.Sprintf("jobs[%d].target", i)
	t := proto.Clone(in).(*ferryv1.TargetVm)
	switch {
	case t.VmName == "":
		c.Add(p+".vm_name", "required: the target VM's name")
	case strings.ContainsAny(t.VmName, "/"):
		c.Add(p+".vm_name", "%q must not contain '/'", t.VmName)
	default:
		validate.Text(c, p+".vm_name", t.VmName, maxVMName)
		if k, dup := seen.vmNames[t.VmName]; dup {
			c.Add(p+".vm_name", "%q is also the name of jobs[%d].target", t.VmName, k)
		}
		seen.vmNames[t.VmName] = i
	}
	validate.Ref(c, p+".cluster", t.Cluster, validate.Clusters)
	validate.Ref(c, p+".primary_storage", t.PrimaryStorage, validate.Storages)
	validate.OptionalRef(c, p+".host", t.Host, validate.Hosts)
	if t.Cpus < 1 || t.Cpus > maxCPUs {
		c.Add(p+".cpus", "must be 1 to %d, got %d", maxCPUs, t.Cpus)
	}
	if t.MemoryBytes < 1<<20 {
		c.Add(p+".memory_bytes", "must be at least 1 MiB (1048576), got %d", t.MemoryBytes)
	}
	checkDisks(c, p+".disks", t.Disks)
	for j, d := range t.Disks {
		if t.MachineType == ferryv1.MachineType_MACHINE_TYPE_Q35 && d.GetBus() == ferryv1.DiskBus_DISK_BUS_IDE {
			c.Add(fmt.Sprintf("%s.disks[%d].bus", p, j), "IDE needs machine_type MACHINE_TYPE_PC: a q35 machine has no IDE controller")
		}
	}
	checkNICs(c, p+".nics", t.Nics)
	if t.CdromCount < 0 || t.CdromCount > maxCDROMs {
		c.Add(p+".cdrom_count", "a target VM has 0 to %d CD-ROM drives, got %d", maxCDROMs, t.CdromCount)
	}
	validate.Enum(c, p+".firmware", t.Firmware, false)
	validate.Enum(c, p+".os_type", t.OsType, false)
	validate.Enum(c, p+".disk_bus", t.DiskBus, false)
	validate.Enum(c, p+".machine_type", t.MachineType, false)
	if t.MachineType == ferryv1.MachineType_MACHINE_TYPE_Q35 && t.DiskBus == ferryv1.DiskBus_DISK_BUS_IDE {
		c.Add(p+".disk_bus", "IDE needs machine_type MACHINE_TYPE_PC: a q35 machine has no IDE controller")
	}
	return t
}

func checkDisks(c *validate.Checker, p string, disks []*ferryv1.TargetDisk) {
	if len(disks) == 0 {
		c.Add(p, "a target VM needs at least one disk (the root disk first)")
		return
	}
	seen := map[string]int{}
	boot := -1
	for j, d := range disks {
		dp := fmt.Sprintf("%s[%d]", p, j)
		validate.Enum(c, dp+".bus", d.GetBus(), false)
		if d.GetBoot() {
			if boot >= 0 {
				c.Add(dp+".boot", "%s[%d] boots already; one disk boots", p, boot)
			}
			boot = j
		}
		switch {
		case d.GetSourceDisk() == "":
			c.Add(dp+".source_disk", "required: the source disk (e.g. vda, or a VMware disk key)")
		default:
			if k, dup := seen[d.GetSourceDisk()]; dup {
				c.Add(dp+".source_disk", "%q is also %s[%d]", d.GetSourceDisk(), p, k)
			}
			seen[d.GetSourceDisk()] = j
		}
		validate.Text(c, dp+".display_name", d.GetDisplayName(), validate.MaxDisplayName)
		if d.GetSizeBytes() <= 0 {
			c.Add(dp+".size_bytes", "must be positive: the virtual size of the source disk")
		}
	}
}

// checkNICs checks each NIC and defaults its MAC to the source MAC. IPs
// are checked against their network later.
func checkNICs(c *validate.Checker, p string, nics []*ferryv1.TargetNic) {
	if len(nics) == 0 {
		c.Add(p, "a target VM needs at least one NIC")
		return
	}
	macs := map[string]int{}
	for j, n := range nics {
		np := fmt.Sprintf("%s[%d]", p, j)
		validate.Ref(c, np+".l3_network", n.GetL3Network(), validate.Networks)
		if field, ok := checkMAC(c, np, n); ok {
			if k, dup := macs[n.GetMac()]; dup {
				c.Add(field, "%s is also the MAC of %s[%d]", n.GetMac(), p, k)
			}
			macs[n.GetMac()] = j
		}
		switch n.GetModel() {
		case "", "virtio", "e1000", "e1000e", "rtl8139":
		default:
			c.Add(np+".model", "%q is not a NIC model Ferry defines: virtio, e1000, e1000e or rtl8139", n.GetModel())
		}
		if n.GetIp() != "" {
			if a, ok := validate.ParseIP(n.GetIp()); !ok {
				c.Add(np+".ip", "%q is not an IP address", n.GetIp())
			} else {
				n.Ip = a.String()
			}
		}
	}
}

// checkMAC normalises a NIC's MACs, defaulting mac to source_mac, and
// returns the field the target MAC came from.
func checkMAC(c *validate.Checker, np string, n *ferryv1.TargetNic) (string, bool) {
	if n.GetSourceMac() != "" {
		mac, why := validate.ParseMAC(n.GetSourceMac())
		if why != "" {
			c.Add(np+".source_mac", "%q %s", n.GetSourceMac(), why)
			return "", false
		}
		n.SourceMac = mac
	}
	if n.GetMac() == "" {
		if n.GetSourceMac() == "" {
			c.Add(np+".mac", "required when source_mac is empty: the target NIC's MAC")
			return "", false
		}
		n.Mac = n.GetSourceMac()
		return np + ".source_mac", true
	}
	mac, why := validate.ParseMAC(n.GetMac())
	if why != "" {
		c.Add(np+".mac", "%q %s", n.GetMac(), why)
		return "", false
	}
	n.Mac = mac
	return np + ".mac", true
}
