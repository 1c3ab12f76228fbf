package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/plan"
)

// jobFlags describe one VM of "job create" without a plan file.
type jobFlags struct {
	planFile string
	reqID    string

	source, server, vm          string
	targetName, cluster, store  string
	host, memory                string
	cpus, cdroms                int32
	nics, disks                 []string
	firmware, osType, diskBus   *enumFlag
	compression                 *enumFlag
	guestConversion             *enumFlag
	pauseSource, start, noStart bool
	// network and group, when set, fill what the flags leave out from the
	// source's description of the VM (ListSourceVMs) through targetspec:
	// every disk, every NIC on the L3 network the group maps its network
	// to (else network), vCPUs, memory, firmware, CD-ROMs, OS type, bus.
	network, group      string
	useSourceNICAddress bool
	verifyBoot          bool
	mode                *enumFlag
	precopyInterval     time.Duration
	enableCBT           bool
	cutoverAt           string
}

// fills reports whether the flags ask to fill the spec from the source.
func (jf *jobFlags) fills() bool { return jf.network != "" || jf.group != "" }

// planFlags are the flags that build a request from flags, not allowed
// together with -f.
var planFlags = []string{"source", "migration-server", "vm", "target-name", "cluster", "storage", "host",
	"cpus", "memory", "nic", "disk", "network", "network-mapping-group", "use-source-nic-address", "cdroms", "firmware", "os", "disk-bus", "compression", "pause-source", "start", "no-start", "verify-boot",
	"mode", "precopy-interval", "cutover-at", "enable-cbt", "guest-conversion"}

// newJobFlags returns the flags of job create and job preview.
func newJobFlags() *jobFlags {
	return &jobFlags{
		firmware:        newEnumFlag(ferryv1.Firmware(0).Descriptor(), nil),
		osType:          newEnumFlag(ferryv1.OsType(0).Descriptor(), nil),
		diskBus:         newEnumFlag(ferryv1.DiskBus(0).Descriptor(), nil),
		compression:     newEnumFlag(ferryv1.Compression(0).Descriptor(), nil),
		mode:            newEnumFlag(ferryv1.MigrationMode(0).Descriptor(), nil),
		guestConversion: newEnumFlag(ferryv1.GuestConversion(0).Descriptor(), nil),
	}
}

// preRun checks that the flags describe one VM, or that -f stands alone.
func (jf *jobFlags) preRun(cmd *cobra.Command, _ []string) error {
	if jf.start && jf.noStart {
		return usagef("--start and --no-start contradict each other; give one")
	}
	if jf.planFile == "" && jf.fills() {
		return required(cmd, "source", "migration-server", "vm", "cluster", "storage")
	}
	if jf.planFile == "" {
		return required(cmd, "source", "migration-server", "vm", "cluster", "storage", "cpus", "memory", "disk", "nic")
	}
	for _, name := range planFlags {
		if cmd.Flags().Changed(name) {
			return usagef("--%s cannot be combined with -f: put it in the plan", name)
		}
	}
	return nil
}

func (a *app) jobCreate() *cobra.Command {
	jf := newJobFlags()
	var yes bool
	cmd := &cobra.Command{
		Use:   "create (-f PLAN | --source SRC --migration-server SRV --vm VM ...)",
		Short: "Create jobs from a plan file, or one job from flags",
		Long:  jobCreateLong,
		Example: `  # One VM from flags
  ferryctl job create --source kvm-src --migration-server kvm-1 --vm web-1 \
      --cluster prod --storage local-1 --cpus 2 --memory 4GiB \
      --disk vda=20GiB,name=root --disk vdb=100GiB --nic 52:54:00:12:34:56=lan

  # The same, its shape (disks, NICs, vCPUs, memory, firmware) read from the source
  ferryctl job create --source kvm-src --migration-server kvm-1 --vm web-1 \
      --cluster prod --storage local-1 --network lan

  # A vCenter VM, NICs placed by a network-mapping group, keeping MACs and addresses
  ferryctl job create --source vc --migration-server vmw-1 --vm vm-1042 \
      --cluster prod --storage nfs-1 --network-mapping-group dc1 --use-source-nic-address

  # Up to 50 VMs from a plan, then follow them
  ferryctl job create -f plan.yaml --yes -o json
  ferryctl job create -f plan.yaml && ferryctl job watch

  # A plan from standard input (which then cannot answer the question)
  ferryctl job create -f - --yes < plan.json`,
		Args:    noArgs,
		PreRunE: jf.preRun,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			req, err := a.batchRequest(ctx, cl, jf)
			if err != nil {
				return err
			}
			p, err := a.previewAndConfirm(ctx, cl, req, yes)
			if err != nil {
				if p != nil {
					_ = a.printCreated(p, nil)
				}
				return err
			}
			resp, err := cl.Jobs().CreateMigrationJobs(ctx, req)
			if err != nil {
				return err
			}
			return a.printCreated(p, resp)
		}),
	}
	jf.addFlags(cmd)
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "create without asking (needed when standard input is not a terminal)")
	return cmd
}

const jobCreateLong = `Create migration jobs, one per VM, all on one migration server.

The batch is previewed first (see 'ferryctl job preview'): the jobs as
they would be made, what they take of the target cluster's CPUs and
memory, of the primary storage and of each network's addresses, and the
pre-checks that fail. A batch with a failed pre-check is not created.
Otherwise ferryctl asks "Create N jobs? [y/N]" on a terminal; --yes
creates without asking, and is needed when standard input is not a
terminal. With -o json or yaml the output is one document holding the
preview and the jobs created.

From a plan file (-f FILE, or -f - for standard input): the file is a
CreateMigrationJobsRequest of the API in YAML or JSON with proto field
names, up to 50 VMs:

  source: sources/kvm-src
  migration_server: migrationServers/kvm-1
  request_id: plan-2024-06-01     # optional: a repeat returns the first answer
  jobs:
    - source_vm: web-1
      target:
        vm_name: web-1
        cluster: clusters/prod
        primary_storage: primaryStorages/local-1
        cpus: 2
        memory_bytes: 4294967296
        disks:                    # root first, then the data disks kept
          - {source_disk: vda, display_name: root, size_bytes: 21474836480}
        nics: [{source_mac: "52:54:00:12:34:56", l3_network: l3Networks/lan}]
        firmware: FIRMWARE_UEFI
      options:
        compression: COMPRESSION_ZSTD
        auto_start: true          # unset: as the source (not started when it is paused or shut off)
        verify_boot: true         # start the target and prove the guest boots

Unknown fields are refused, so a typo does not pass silently.

From flags, for one VM: --source, --migration-server, --vm, --cluster,
--storage, --cpus, --memory, at least one --disk and one --nic. Sizes take
K/M/G/T (powers of 1024) or KB/MB/GB/TB. A disk is SOURCE_DISK=SIZE
[,name=NAME], the source disk and its virtual size, root first; only the
disks named are kept. A NIC is SOURCE_MAC=NETWORK[,mac=MAC][,ip=IP]: the
target MAC is the source's unless mac= is given, the address is allocated
from the network's range unless ip= is given.

With --network NET and/or --network-mapping-group GROUP, what the flags
leave out is read from the source (as 'ferryctl source vms' shows it), the
way the coordinator fills an incomplete plan: the source VM's name, every
disk with its size, root first, every NIC with its MAC kept on the L3
network GROUP maps its portgroup or network to (else NET), vCPUs, memory,
firmware (EFI stays UEFI), CD-ROM drives (at most 3), the platform (Linux
or Windows, from the guest OS id) and its disk bus (virtio-scsi for
Linux, SATA for Windows, virtio-scsi for --os windows-virtio). The agent
gives Windows e1000 NICs (windows-virtio and Linux: virtio) and both
Windows platforms a local-time clock (Linux: UTC).
--use-source-nic-address gives each NIC its source MAC and the guest's
address inside the L3 network's range (as VMware Tools, the QEMU guest
agent or a DHCP lease of a libvirt network report it), held as its
reservation; a NIC whose guest address is unknown or outside the range
gets one allocated from the range instead, and the preview's notes say so.

The target VM keeps the source VM's state: it is started when the source
runs, and defined but not started when the source is paused or shut off
(the preview says so under Notes). --start starts it anyway, --no-start
never.

--verify-boot proves the target boots: the agent starts it after defining
it and waits (its --verify-boot-timeout, 5 minutes by default) for the
QEMU guest agent to answer, a DHCP lease for a NIC's MAC, or a line on
the serial console; a guest that shows none fails the job, which is
rolled back. 'ferryctl job get' shows how it booted. Not with --no-start.

--guest-conversion (auto, on, off) says whether the guest is adapted to KVM
between the copy and the upload (phase PREPARING), with virt-v2v-in-place
on the cache images: virtio drivers in the initramfs, VMware tools removed,
the NIC named as the guest's network configuration names it. auto (the
default) is on for VMware sources, off for KVM ones. 'ferryctl job get'
shows what the inspection found and what changed; a failed conversion
fails the job with virt-v2v's reason, and a restart with off uploads the
cache as it was copied.

Without --request-id a fresh one is generated, so ferryctl may resend the
request after a lost answer without creating the jobs twice.`

func (jf *jobFlags) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVarP(&jf.planFile, "file", "f", "", "plan file, YAML or JSON (- for standard input)")
	addRequestIDFlag(cmd, &jf.reqID)
	f.StringVar(&jf.source, "source", "", "source the VM is on")
	f.StringVar(&jf.server, "migration-server", "", "migration server that moves it")
	f.StringVar(&jf.vm, "vm", "", "the VM at the source (libvirt domain name or UUID, vCenter managed object id)")
	f.StringVar(&jf.targetName, "target-name", "", "name of the target VM (default: --vm)")
	f.StringVar(&jf.cluster, "cluster", "", "target cluster")
	f.StringVar(&jf.store, "storage", "", "target primary storage")
	f.StringVar(&jf.host, "host", "", "target host (default: by the allocation strategy)")
	f.Int32Var(&jf.cpus, "cpus", 0, "vCPUs of the target VM")
	f.StringVar(&jf.memory, "memory", "", "memory of the target VM, such as 4GiB")
	f.StringArrayVar(&jf.nics, "nic", nil, "SOURCE_MAC=NETWORK[,mac=MAC][,ip=IP]; repeat per NIC")
	f.StringArrayVar(&jf.disks, "disk", nil, "SOURCE_DISK=SIZE[,name=NAME]; repeat per disk kept, root first")
	f.Int32Var(&jf.cdroms, "cdroms", 0, "CD-ROM drives, at most 3")
	f.StringVar(&jf.network, "network", "", "L3 network for every NIC the group does not map; fill what other flags leave out from the source's view of the VM")
	f.StringVar(&jf.group, "network-mapping-group", "", "network-mapping group placing each source NIC; fill what other flags leave out from the source")
	f.BoolVar(&jf.useSourceNICAddress, "use-source-nic-address", false, "give each target NIC its source MAC and guest IP address (allocated from the range when unknown or outside it)")
	addEnumFlag(f, jf.firmware, "firmware", "target firmware (UEFI keeps its NVRAM)")
	addEnumFlag(f, jf.osType, "os", "guest OS (windows: SATA disks and e1000 NICs; windows and windows-virtio: local-time clock)")
	addEnumFlag(f, jf.diskBus, "disk-bus", "disk bus (default: virtio-scsi for Linux and windows-virtio, SATA for Windows)")
	addEnumFlag(f, jf.compression, "compression", "cache image compression (default zstd)")
	addEnumFlag(f, jf.guestConversion, "guest-conversion", "adapt the guest to KVM with virt-v2v-in-place between the copy and the upload (default auto: on for VMware sources, off for KVM)")
	f.BoolVar(&jf.pauseSource, "pause-source", false, "pause a running source VM before the copy and leave it paused (--mode warm: pause a KVM source at the cutover instead of shutting its guest down)")
	f.BoolVar(&jf.start, "start", false, "start the target VM even when the source VM is paused or shut off")
	f.BoolVar(&jf.verifyBoot, "verify-boot", false, "start the target VM and fail the job unless the guest shows it booted (guest agent, DHCP lease or serial console)")
	addEnumFlag(f, jf.mode, "mode", "cold, live or warm (default: live for KVM, cold for VMware); warm copies in precopy rounds until \"job cutover\"")
	f.DurationVar(&jf.precopyInterval, "precopy-interval", 0, "warm: time between precopy rounds (default: the settings' precopy_interval, 30m)")
	f.BoolVar(&jf.enableCBT, "enable-cbt", false, "warm, VMware: turn changed-block tracking on when the VM has it off (a reconfiguration of the VM; it stays on)")
	f.StringVar(&jf.cutoverAt, "cutover-at", "", "warm: when to cut over, an RFC 3339 time or a duration from now (default: wait for \"job cutover\")")
	f.BoolVar(&jf.noStart, "no-start", false, "leave the target VM stopped (default: started when the source VM runs, not when it is paused or shut off)")
}

// jobRequest builds the request from the plan file or the flags.
func (a *app) jobRequest(jf *jobFlags) (*ferryv1.CreateMigrationJobsRequest, error) {
	var req *ferryv1.CreateMigrationJobsRequest
	var err error
	if jf.planFile != "" {
		req, err = a.readPlan(jf.planFile)
	} else {
		req, err = jf.request()
	}
	if err != nil {
		return nil, err
	}
	if jf.reqID != "" {
		req.RequestId = jf.reqID
	}
	if req.RequestId == "" {
		req.RequestId = newRequestID()
	}
	return req, nil
}

func (a *app) readPlan(path string) (*ferryv1.CreateMigrationJobsRequest, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(a.io.In, 16<<20))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("plan %s: %w", path, err)
	}
	req, err := plan.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("plan %s: %w", path, err)
	}
	return req, nil
}

// request builds the one-VM request the flags describe.
func (jf *jobFlags) request() (*ferryv1.CreateMigrationJobsRequest, error) {
	name := orDefault(jf.targetName, jf.vm)
	if jf.fills() {
		name = jf.targetName // the source VM's name unless given
	}
	target := &ferryv1.TargetVm{
		VmName: name, Cluster: resName("clusters", jf.cluster),
		PrimaryStorage: resName("primaryStorages", jf.store), Host: resName("hosts", jf.host),
		Cpus: jf.cpus, CdromCount: jf.cdroms,
		Firmware: ferryv1.Firmware(jf.firmware.value), OsType: ferryv1.OsType(jf.osType.value), DiskBus: ferryv1.DiskBus(jf.diskBus.value),
	}
	if jf.memory != "" {
		n, err := parseBytes(jf.memory)
		if err != nil {
			return nil, usagef("--memory: %v", err)
		}
		target.MemoryBytes = n
	}
	for _, s := range jf.nics {
		nic, err := parseNIC(s)
		if err != nil {
			return nil, usagef("--nic %v", err)
		}
		target.Nics = append(target.Nics, nic)
	}
	for _, s := range jf.disks {
		disk, err := parseDisk(s)
		if err != nil {
			return nil, usagef("--disk %v", err)
		}
		target.Disks = append(target.Disks, disk)
	}
	opts := &ferryv1.MigrationOptions{Compression: ferryv1.Compression(jf.compression.value), PauseSourceVm: jf.pauseSource,
		UseSourceNicAddress: jf.useSourceNICAddress, VerifyBoot: jf.verifyBoot, EnableCbt: jf.enableCBT}
	if jf.mode != nil {
		opts.Mode = ferryv1.MigrationMode(jf.mode.value)
	}
	if jf.precopyInterval != 0 {
		opts.PrecopyInterval = durationpb.New(jf.precopyInterval)
	}
	cutover, err := cutoverFlag("cutover-at", jf.cutoverAt)
	if err != nil {
		return nil, err
	}
	opts.CutoverTime = cutover
	if jf.guestConversion != nil {
		opts.GuestConversion = ferryv1.GuestConversion(jf.guestConversion.value)
	}
	switch {
	case jf.noStart:
		opts.AutoStart = proto.Bool(false)
	case jf.start:
		opts.AutoStart = proto.Bool(true)
	}
	return &ferryv1.CreateMigrationJobsRequest{
		Source:              resName("sources", jf.source),
		MigrationServer:     resName("migrationServers", jf.server),
		NetworkMappingGroup: resName(colMappings, jf.group),
		Jobs:                []*ferryv1.MigrationJobSpec{{SourceVm: jf.vm, Target: target, Options: opts}},
	}, nil
}

// showCreatedJobs prints the jobs a create made.
func (a *app) showCreatedJobs(resp *ferryv1.CreateMigrationJobsResponse) error {
	var rows [][]string
	for _, j := range resp.GetJobs() {
		rows = append(rows, []string{j.GetName(), j.GetSourceVm(), j.GetTarget().GetVmName(), jobState(j), jobProgress(j)})
	}
	return a.showList(resp, []string{"NAME", "SOURCE VM", "TARGET VM", "STATE", "PROGRESS"}, rows, "")
}

// batchRequest is the request of 'job create' and 'job preview': from the
// plan file or the flags, with the VM's shape read from the source when
// the flags leave it out.
func (a *app) batchRequest(ctx context.Context, cl *client.Client, jf *jobFlags) (*ferryv1.CreateMigrationJobsRequest, error) {
	req, err := a.jobRequest(jf)
	if err != nil {
		return nil, err
	}
	if jf.fills() {
		if err := fillFromSource(ctx, cl, req, resName("l3Networks", jf.network)); err != nil {
			return nil, err
		}
	}
	return req, nil
}
