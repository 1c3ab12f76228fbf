package api

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// maxExportJobs is CreateExportJobs' batch limit, as a migration batch's.
const maxExportJobs = 50

func (s *jobService) CreateExportJobs(ctx context.Context, req *ferryv1.CreateExportJobsRequest) (*ferryv1.CreateExportJobsResponse, error) {
	jobs, err := s.createExports(ctx, req)
	return reply(ctx, s.a, &ferryv1.CreateExportJobsResponse{Jobs: jobs}, err)
}

// GetBundleSigningKey answers the public half of the cluster's key from
// the ledger, and never writes: the leader makes the key when it takes
// the lead (or at its first signing), and its private half never leaves
// the coordinators.
func (s *jobService) GetBundleSigningKey(ctx context.Context, _ *ferryv1.GetBundleSigningKeyRequest) (*ferryv1.BundleSigningKey, error) {
	k, ok := s.a.ledger.BundleSigningKey()
	if !ok {
		return reply[*ferryv1.BundleSigningKey](ctx, s.a, nil, status.Error(codes.NotFound,
			"bundleSigningKey not found: the leader makes it when it takes the lead; ask again in a moment"))
	}
	pub := ed25519.PublicKey(k.GetPublicKey())
	return reply(ctx, s.a, &ferryv1.BundleSigningKey{Name: "bundleSigningKey", PublicKey: bundle.EncodeKey(pub), KeyId: bundle.KeyID(pub)}, nil)
}

// createExports checks a batch, reads each VM from the source's synced
// inventory (syncing it first when it never was), and creates one job
// per VM: the disks all kept, no target VM, the export spec stamped with
// its bundle name.
func (s *jobService) createExports(ctx context.Context, req *ferryv1.CreateExportJobsRequest) ([]*ferryv1.MigrationJob, error) {
	if names, ok, err := s.a.firstRequest(req.GetRequestId(), colJobs); err != nil || ok {
		return s.readJobs(names, err)
	}
	c := &checker{}
	checkRequestID(c, req.GetRequestId())
	checkRef(c, "source", req.GetSource(), colSources)
	checkRef(c, "migration_server", req.GetMigrationServer(), colServers)
	switch n := len(req.GetJobs()); {
	case n == 0:
		c.add("jobs", "at least one VM is required")
	case n > maxExportJobs:
		c.add("jobs", "at most %d VMs per request, got %d; split the batch", maxExportJobs, n)
	}
	for i, spec := range req.GetJobs() {
		checkExportSpec(c, fmt.Sprintf("jobs[%d]", i), spec)
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	src, srv, err := s.exportRefs(ctx, req)
	if err != nil {
		return nil, err
	}
	inv, _ := s.a.ledger.SourceInventory(src.GetName())
	jobs := make([]*ferryv1.MigrationJob, len(req.GetJobs()))
	seen := map[string]int{}
	for i, spec := range req.GetJobs() {
		p := fmt.Sprintf("jobs[%d]", i)
		vm := findVM(inv, spec.GetSourceVm())
		if vm == nil {
			return nil, precondition(p+".source_vm", "%q is not in the synced inventory of %s; sync it (ferryctl source sync) or name the VM by its id", spec.GetSourceVm(), src.GetName())
		}
		j := exportJob(spec, vm)
		j.Name = colJobs + "/" + s.a.newID()
		j.Source, j.MigrationServer = src.GetName(), srv.GetName()
		key := destinationKey(j.GetExport())
		if k, dup := seen[key]; dup {
			return nil, invalid(p+".export.bundle_name", "%q is also jobs[%d]'s bundle in the same destination; give one another bundle_name", j.GetExport().GetBundleName(), k)
		}
		seen[key] = i
		jobs[i] = j
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
		Jobs: jobs, RequestId: req.GetRequestId()}}}
	names, err := s.a.propose(ctx, cmd)
	if err == nil {
		err = checkCollection(names, colJobs, req.GetRequestId())
	}
	return s.readJobs(names, err)
}

// exportRefs reads the source and server and syncs a source never synced.
func (s *jobService) exportRefs(ctx context.Context, req *ferryv1.CreateExportJobsRequest) (*ferryv1.Source, *ferryv1.MigrationServer, error) {
	src, ok := s.a.ledger.Source(req.GetSource())
	if !ok {
		return nil, nil, notFound("source", req.GetSource())
	}
	srv, ok := s.a.ledger.MigrationServer(req.GetMigrationServer())
	if !ok {
		return nil, nil, notFound("migration_server", req.GetMigrationServer())
	}
	switch {
	case src.GetType() == ferryv1.Platform_PLATFORM_BUNDLE:
		return nil, nil, precondition("source", "%s is a bundle source: its VMs are bundles already; migrate them instead", src.GetName())
	case srv.GetType() != src.GetType():
		return nil, nil, precondition("migration_server", "%s is a %s server and cannot reach %s source %s",
			srv.GetName(), platformName(srv.GetType()), platformName(src.GetType()), src.GetName())
	}
	for i, spec := range req.GetJobs() {
		if d := spec.GetExport().GetDestination(); d.GetType() == ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_SMB {
			f := fmt.Sprintf("jobs[%d].export.destination.credential", i)
			cr, ok := s.a.ledger.Credential(d.GetCredential())
			if !ok {
				return nil, nil, notFound(f, d.GetCredential())
			}
			if cr.GetCredential().GetType() != ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD {
				return nil, nil, precondition(f, "%s is not a password credential", d.GetCredential())
			}
		}
	}
	if !s.a.ledger.HasSourceInventory(src.GetName()) && s.a.agents != nil {
		if err := s.a.syncSource(ctx, src.GetName(), srv.GetName()); err != nil {
			return nil, nil, err
		}
	}
	return src, srv, nil
}

// checkExportSpec checks one VM of a batch on its own.
func checkExportSpec(c *checker, p string, spec *ferryv1.ExportJobSpec) {
	if spec.GetSourceVm() == "" {
		c.add(p+".source_vm", "required: the VM's libvirt domain name or UUID, or its vCenter managed object id")
	}
	validate.Text(&c.Checker, p+".display_name", spec.GetDisplayName(), validate.MaxDisplayName)
	validate.Description(&c.Checker, p+".description", spec.GetDescription())
	o := spec.GetOptions()
	validate.Enum(&c.Checker, p+".options.compression", o.GetCompression(), false)
	if (o != nil && o.AutoStart != nil) || o.GetVerifyBoot() || o.GetUseSourceNicAddress() {
		c.add(p+".options", "an export makes no target VM: only compression and pause_source_vm apply")
	}
	e := spec.GetExport()
	if e == nil {
		c.add(p+".export", "required: the destination and format")
		return
	}
	validate.Enum(&c.Checker, p+".export.format", e.GetFormat(), false)
	if e.GetCompress() && e.GetFormat() != ferryv1.ExportFormat_EXPORT_FORMAT_QCOW2 && e.GetFormat() != ferryv1.ExportFormat_EXPORT_FORMAT_UNSPECIFIED {
		c.add(p+".export.compress", "only qcow2 bundles are compressed; %s is not", e.GetFormat())
	}
	if e.GetRateLimitBytesPerSecond() < 0 {
		c.add(p+".export.rate_limit_bytes_per_second", "must not be negative")
	}
	if n := e.GetBundleName(); n != "" && !plainName(n) {
		c.add(p+".export.bundle_name", "%q is not a plain directory name (no '/', not '.' or '..', at most 255 bytes)", n)
	}
	checkDestination(c, p+".export.destination", e.GetDestination())
}

func checkDestination(c *checker, p string, d *ferryv1.ExportDestination) {
	validate.Enum(&c.Checker, p+".type", d.GetType(), false)
	switch d.GetType() {
	case ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY, ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_UNSPECIFIED:
		if !filepath.IsAbs(d.GetPath()) || filepath.Clean(d.GetPath()) != d.GetPath() {
			c.add(p+".path", "%q is not a clean absolute directory of the migration server", d.GetPath())
		}
		if d.GetShare() != "" || d.GetUser() != "" || d.GetCredential() != "" {
			c.add(p+".share", "a directory destination has no share, user or credential")
		}
	case ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_NFS:
		if host, dir, ok := strings.Cut(d.GetShare(), ":"); !ok || host == "" || !strings.HasPrefix(dir, "/") {
			c.add(p+".share", "%q is not server:/export", d.GetShare())
		}
		checkRelative(c, p+".path", d.GetPath())
	case ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_SMB:
		if rest, ok := strings.CutPrefix(d.GetShare(), "//"); !ok || !strings.Contains(strings.Trim(rest, "/"), "/") || strings.ContainsAny(d.GetShare(), ", \t\n") {
			c.add(p+".share", "%q is not //server/share", d.GetShare())
		}
		checkRelative(c, p+".path", d.GetPath())
		if d.GetUser() == "" || strings.ContainsAny(d.GetUser()+d.GetDomain(), ",=\n") {
			c.add(p+".user", "required, without ',', '=' or newlines")
		}
		checkRef(c, p+".credential", d.GetCredential(), colCreds)
	}
}

func checkRelative(c *checker, field, rel string) {
	if rel == "" {
		return
	}
	if filepath.IsAbs(rel) || filepath.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") {
		c.add(field, "%q is not a clean directory inside the share", rel)
	}
}

// plainName is a name of one directory entry.
func plainName(n string) bool {
	return n != "" && n != "." && n != ".." && len(n) <= 255 && !strings.ContainsAny(n, "/\x00")
}

// destinationKey is where a job's bundle lands, to find two of a batch
// in one place.
func destinationKey(e *ferryv1.ExportSpec) string {
	d := e.GetDestination()
	return d.GetType().String() + "\x00" + d.GetShare() + "\x00" + path.Join(d.GetPath(), e.GetBundleName())
}

// findVM finds a VM of inv by id or UUID, or by a name one VM alone has.
func findVM(inv *ferryv1.SourceInventory, ref string) *ferryv1.SourceVm {
	var byName []*ferryv1.SourceVm
	for _, vm := range inv.GetVms() {
		if vm.GetId() == ref || vm.GetUuid() == ref {
			return vm
		}
		if vm.GetName() == ref {
			byName = append(byName, vm)
		}
	}
	if len(byName) == 1 {
		return byName[0]
	}
	return nil
}

// exportJob is the job of one spec: every disk of vm kept, in its order.
func exportJob(spec *ferryv1.ExportJobSpec, vm *ferryv1.SourceVm) *ferryv1.MigrationJob {
	e := proto.Clone(spec.GetExport()).(*ferryv1.ExportSpec)
	if e.GetBundleName() == "" {
		e.BundleName = strings.NewReplacer("/", "_", "\x00", "_").Replace(vm.GetName())
	}
	if e.GetDestination().GetType() == ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_UNSPECIFIED {
		e.Destination.Type = ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY
	}
	if e.GetFormat() == ferryv1.ExportFormat_EXPORT_FORMAT_UNSPECIFIED {
		e.Format = ferryv1.ExportFormat_EXPORT_FORMAT_QCOW2
	}
	opts := proto.Clone(spec.GetOptions()).(*ferryv1.MigrationOptions)
	if opts == nil {
		opts = &ferryv1.MigrationOptions{}
	}
	t := &ferryv1.TargetVm{VmName: vm.GetName(), Cpus: vm.GetCpus(), MemoryBytes: vm.GetMemoryBytes(), Firmware: vm.GetFirmware(),
		CdromCount: vm.GetCdromCount(), OsType: vm.GetOsType()}
	for _, d := range vm.GetDisks() {
		t.Disks = append(t.Disks, &ferryv1.TargetDisk{SourceDisk: d.GetTarget(), SizeBytes: d.GetCapacityBytes(), DisplayName: d.GetTarget()})
	}
	return &ferryv1.MigrationJob{SourceVm: spec.GetSourceVm(), Target: t, Options: opts, Export: e,
		DisplayName: spec.GetDisplayName(), Description: spec.GetDescription()}
}
