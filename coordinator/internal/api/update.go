package api

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Updates (AIP-134) share one shape: the request carries the resource
// (its name says which) and a field mask; the handler reads the stored
// resource, applies the masked fields to a copy, validates the copy as
// creation does, and proposes an UpdateResource command carrying only the
// masked fields and the client's etag. The ledger applies those fields to
// the resource as stored when the command commits, so an update never
// undoes a change made in between to another field (an address reserved,
// a host key observed, a job's progress).

// checkDescription allows line breaks and tabs in free text, but no other
// control characters.
func checkDescription(c *checker, field, s string) { validate.Description(&c.Checker, field, s) }

// updatePaths checks a request's field mask against the paths a resource
// lets an update change (all of them when the mask is empty), expanding a
// message path ("kvm") into its settable fields ("kvm.address", ...).
// field is the request's resource field, for messages.
func updatePaths(c *checker, mask *fieldmaskpb.FieldMask, settable []string, field string) []string {
	paths := mask.GetPaths()
	if len(paths) == 0 {
		return settable
	}
	var out []string
	for i, p := range paths {
		var below []string
		for _, s := range settable {
			if strings.HasPrefix(s, p+".") {
				below = append(below, s)
			}
		}
		switch {
		case slices.Contains(settable, p):
			out = append(out, p)
		case len(below) > 0:
			out = append(out, below...)
		default:
			c.add(fmt.Sprintf("update_mask.paths[%d]", i), "%q cannot be updated; a %s's updatable fields are %s",
				p, strings.ReplaceAll(field, "_", " "), strings.Join(settable, ", "))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// withETag sets m's etag, when it has one, from the resource as stored;
// call it before adding anything the ledger does not store.
func withETag[T proto.Message](m T) T {
	e, ok := any(m).(interface {
		proto.Message
		GetEtag() string
	})
	if !ok {
		return m
	}
	r := m.ProtoReflect()
	if fd := r.Descriptor().Fields().ByName("etag"); fd != nil && fd.Kind() == protoreflect.StringKind {
		r.Set(fd, protoreflect.ValueOfString(ledger.ETag(e)))
	}
	return m
}

// proposeUpdate proposes an UpdateResource, naming field's etag when the
// ledger finds it stale.
func (a *API) proposeUpdate(ctx context.Context, u *ledgerv1.UpdateResource, field string) error {
	_, err := a.propose(ctx, &ledgerv1.Command{Op: &ledgerv1.Command_UpdateResource{UpdateResource: u}})
	return etagField(err, field+".etag")
}

var serverUpdatable = []string{"description", "display_name", "downstream_bandwidth", "upstream_bandwidth", "virtio_win_iso"}

func (s *serverService) UpdateMigrationServer(ctx context.Context, req *ferryv1.UpdateMigrationServerRequest) (*ferryv1.MigrationServer, error) {
	ms, err := s.update(ctx, req)
	return reply(ctx, s.a, ms, err)
}

func (s *serverService) update(ctx context.Context, req *ferryv1.UpdateMigrationServerRequest) (*ferryv1.MigrationServer, error) {
	in := req.GetMigrationServer()
	if in == nil {
		return nil, invalid("migration_server", "required: the server's name and the new values")
	}
	c := &checker{}
	checkRef(c, "migration_server.name", in.GetName(), colServers)
	paths := updatePaths(c, req.GetUpdateMask(), serverUpdatable, "migration_server")
	if err := c.err(); err != nil {
		return nil, err
	}
	ms, ok := s.a.ledger.MigrationServer(in.GetName())
	if !ok {
		return nil, notFound("migration_server.name", in.GetName())
	}
	var send []string
	for _, p := range paths {
		switch p {
		case "display_name":
			ms.DisplayName = in.GetDisplayName()
			checkText(c, "migration_server.display_name", ms.DisplayName, maxDisplayName)
		case "description":
			ms.Description = in.GetDescription()
			checkDescription(c, "migration_server.description", ms.Description)
		case "upstream_bandwidth":
			ms.UpstreamBitsPerSecond, ms.UpstreamBandwidth = bandwidthLimit(c, "migration_server.upstream_bandwidth", in.GetUpstreamBandwidth())
			send = append(send, "upstream_bits_per_second")
		case "downstream_bandwidth":
			ms.DownstreamBitsPerSecond, ms.DownstreamBandwidth = bandwidthLimit(c, "migration_server.downstream_bandwidth", in.GetDownstreamBandwidth())
			send = append(send, "downstream_bits_per_second")
		case "virtio_win_iso":
			ms.VirtioWinIso = in.GetVirtioWinIso()
			checkVirtioWinISO(c, "migration_server.virtio_win_iso", ms.VirtioWinIso)
		}
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	err := s.a.proposeUpdate(ctx, &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_MigrationServer{MigrationServer: ms},
		Paths:    append(paths, send...), Etag: in.GetEtag()}, "migration_server")
	return s.read(in.GetName(), err)
}

var (
	vcenterUpdatable = []string{"vcenter.address", "vcenter.ca_certificate", "vcenter.credential", "vcenter.port",
		"vcenter.skip_hostname_check", "vcenter.thumbprint", "vcenter.use_http", "vcenter.user"}
	kvmUpdatable = []string{"kvm.address", "kvm.credential", "kvm.host_key", "kvm.sasl_credential", "kvm.sasl_user",
		"kvm.ssh_port", "kvm.user"}
)

func (s *sourceService) UpdateSource(ctx context.Context, req *ferryv1.UpdateSourceRequest) (*ferryv1.Source, error) {
	src, err := s.updateSource(ctx, req)
	return reply(ctx, s.a, src, err)
}

func (s *sourceService) updateSource(ctx context.Context, req *ferryv1.UpdateSourceRequest) (*ferryv1.Source, error) {
	in := req.GetSource()
	if in == nil {
		return nil, invalid("source", "required: the source's name and the new values")
	}
	c := &checker{}
	checkRef(c, "source.name", in.GetName(), colSources)
	if err := c.err(); err != nil {
		return nil, err
	}
	src, ok := s.a.ledger.Source(in.GetName())
	if !ok {
		return nil, notFound("source.name", in.GetName())
	}
	settable := []string{"display_name"}
	switch src.GetType() {
	case ferryv1.Platform_PLATFORM_VMWARE:
		settable = append(settable, vcenterUpdatable...)
	case ferryv1.Platform_PLATFORM_KVM:
		settable = append(settable, kvmUpdatable...)
	}
	paths := updatePaths(c, req.GetUpdateMask(), settable, "source")
	if err := c.err(); err != nil {
		return nil, err
	}
	changed := proto.Clone(src).(*ferryv1.Source)
	if err := ledger.CopyPaths(changed, in, paths); err != nil {
		return nil, invalid("update_mask", err.Error())
	}
	checkText(c, "source.display_name", changed.DisplayName, maxDisplayName)
	// The connection is checked whole, as at creation, and sent in the
	// canonical form creation stores (default ports and user filled in).
	switch src.GetType() {
	case ferryv1.Platform_PLATFORM_VMWARE:
		changed.Vcenter = checkVCenter(c, changed)
	case ferryv1.Platform_PLATFORM_KVM:
		changed.Kvm = checkKVM(c, changed)
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	if err := s.checkCredentials(changed); err != nil {
		return nil, err
	}
	err := s.a.proposeUpdate(ctx, &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_Source{Source: changed}, Paths: paths, Etag: in.GetEtag()}, "source")
	if err == nil {
		s.a.kickSync() // the inventory as the new connection sees it
	}
	return s.readSource(in.GetName(), err)
}

var credentialUpdatable = []string{"display_name", "secret"}

func (s *sourceService) UpdateCredential(ctx context.Context, req *ferryv1.UpdateCredentialRequest) (*ferryv1.Credential, error) {
	cred, err := s.updateCredential(ctx, req)
	return reply(ctx, s.a, cred, err)
}

// updateCredential rotates a secret: it is sealed here, as at creation,
// and never logged or answered.
func (s *sourceService) updateCredential(ctx context.Context, req *ferryv1.UpdateCredentialRequest) (*ferryv1.Credential, error) {
	in := req.GetCredential()
	if in == nil {
		return nil, invalid("credential", "required: the credential's name and the new values")
	}
	c := &checker{}
	checkRef(c, "credential.name", in.GetName(), colCreds)
	paths := updatePaths(c, req.GetUpdateMask(), credentialUpdatable, "credential")
	if err := c.err(); err != nil {
		return nil, err
	}
	sc, ok := s.a.ledger.Credential(in.GetName())
	if !ok {
		return nil, notFound("credential.name", in.GetName())
	}
	cred := &ferryv1.Credential{Name: in.GetName(), DisplayName: in.GetDisplayName()}
	out := &ledgerv1.SealedCredential{Credential: cred}
	for _, p := range paths {
		switch p {
		case "display_name":
			checkText(c, "credential.display_name", cred.DisplayName, maxDisplayName)
		case "secret":
			checkSecret(c, sc.GetCredential().GetType(), in.GetSecret())
		}
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	if slices.Contains(paths, "secret") {
		sealed, err := s.a.sealer.Seal([]byte(in.GetSecret()), []byte(cred.Name))
		if err != nil {
			return nil, fmt.Errorf("seal credential %s: %w", cred.Name, err)
		}
		out.SealedSecret, cred.Fingerprint = sealed, s.a.sealer.Fingerprint([]byte(in.GetSecret()))
	}
	err := s.a.proposeUpdate(ctx, &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_Credential{Credential: out}, Paths: paths, Etag: in.GetEtag()}, "credential")
	if err == nil && slices.Contains(paths, "secret") {
		s.a.log.Info("credential rotated", "credential", cred.Name, "fingerprint", cred.Fingerprint)
	}
	return s.readCredential(in.GetName(), err)
}

var clusterUpdatable = []string{"description", "display_name", "zone"}

func (s *targetInventoryService) UpdateCluster(ctx context.Context, req *ferryv1.UpdateClusterRequest) (*ferryv1.Cluster, error) {
	cl, err := s.updateCluster(ctx, req)
	return reply(ctx, s.a, cl, err)
}

func (s *targetInventoryService) updateCluster(ctx context.Context, req *ferryv1.UpdateClusterRequest) (*ferryv1.Cluster, error) {
	in := req.GetCluster()
	if in == nil {
		return nil, invalid("cluster", "required: the cluster's name and the new values")
	}
	c := &checker{}
	checkRef(c, "cluster.name", in.GetName(), colClusters)
	paths := updatePaths(c, req.GetUpdateMask(), clusterUpdatable, "cluster")
	checkText(c, "cluster.display_name", in.GetDisplayName(), maxDisplayName)
	checkText(c, "cluster.zone", in.GetZone(), maxLabel)
	checkDescription(c, "cluster.description", in.GetDescription())
	if err := c.err(); err != nil {
		return nil, err
	}
	if _, ok := s.a.ledger.Cluster(in.GetName()); !ok {
		return nil, notFound("cluster.name", in.GetName())
	}
	err := s.a.proposeUpdate(ctx, &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_Cluster{Cluster: in}, Paths: paths, Etag: in.GetEtag()}, "cluster")
	if err != nil {
		return nil, err
	}
	return lookup(s.a.ledger.Cluster, in.GetName(), "cluster")
}

var storageUpdatable = []string{"description", "display_name"}

func (s *targetInventoryService) UpdatePrimaryStorage(ctx context.Context, req *ferryv1.UpdatePrimaryStorageRequest) (*ferryv1.PrimaryStorage, error) {
	ps, err := s.updatePrimaryStorage(ctx, req)
	return reply(ctx, s.a, ps, err)
}

func (s *targetInventoryService) updatePrimaryStorage(ctx context.Context, req *ferryv1.UpdatePrimaryStorageRequest) (*ferryv1.PrimaryStorage, error) {
	in := req.GetPrimaryStorage()
	if in == nil {
		return nil, invalid("primary_storage", "required: the primary storage's name and the new values")
	}
	c := &checker{}
	checkRef(c, "primary_storage.name", in.GetName(), colStorages)
	paths := updatePaths(c, req.GetUpdateMask(), storageUpdatable, "primary_storage")
	checkText(c, "primary_storage.display_name", in.GetDisplayName(), maxDisplayName)
	checkDescription(c, "primary_storage.description", in.GetDescription())
	if err := c.err(); err != nil {
		return nil, err
	}
	if _, ok := s.a.ledger.PrimaryStorage(in.GetName()); !ok {
		return nil, notFound("primary_storage.name", in.GetName())
	}
	err := s.a.proposeUpdate(ctx, &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_PrimaryStorage{PrimaryStorage: in}, Paths: paths, Etag: in.GetEtag()}, "primary_storage")
	if err != nil {
		return nil, err
	}
	return lookup(s.a.ledger.PrimaryStorage, in.GetName(), "primary storage")
}

var networkUpdatable = []string{"description", "display_name", "dns_servers", "gateway", "ip_range_end", "ip_range_start"}

func (s *targetInventoryService) UpdateL3Network(ctx context.Context, req *ferryv1.UpdateL3NetworkRequest) (*ferryv1.L3Network, error) {
	n, err := s.updateL3Network(ctx, req)
	return reply(ctx, s.a, n, err)
}

func (s *targetInventoryService) updateL3Network(ctx context.Context, req *ferryv1.UpdateL3NetworkRequest) (*ferryv1.L3Network, error) {
	in := req.GetL3Network()
	if in == nil {
		return nil, invalid("l3_network", "required: the network's name and the new values")
	}
	c := &checker{}
	checkRef(c, "l3_network.name", in.GetName(), colNetworks)
	paths := updatePaths(c, req.GetUpdateMask(), networkUpdatable, "l3_network")
	if err := c.err(); err != nil {
		return nil, err
	}
	n, ok := s.a.ledger.L3Network(in.GetName())
	if !ok {
		return nil, notFound("l3_network.name", in.GetName())
	}
	if err := ledger.CopyPaths(n, in, paths); err != nil {
		return nil, invalid("update_mask", err.Error())
	}
	checkText(c, "l3_network.display_name", n.DisplayName, maxDisplayName)
	checkDescription(c, "l3_network.description", n.Description)
	checkRange(c, n) // within the network's prefix, in canonical form
	checkDNS(c, n)
	if err := c.err(); err != nil {
		return nil, err
	}
	if err := checkHeldAddresses(n, s.a.ledger.UsedAddresses(n.GetName())); err != nil {
		return nil, err
	}
	// The ledger checks the same again as the command applies.
	err := s.a.proposeUpdate(ctx, &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_L3Network{L3Network: n}, Paths: paths, Etag: in.GetEtag()}, "l3_network")
	if err != nil {
		return nil, err
	}
	return lookup(s.a.ledger.L3Network, in.GetName(), "L3 network")
}

// checkHeldAddresses refuses a range that leaves out an address in use
// (by a job that is not FAILED or CANCELLED, or a reservation), or a
// gateway that is one, naming the field and the first such address.
func checkHeldAddresses(n *ferryv1.L3Network, used map[string]string) error {
	field, err := ledger.HeldConflict(n, used)
	if err != nil {
		return precondition("l3_network."+field, "%s", strings.TrimPrefix(err.Error(), ledger.ErrFailedPrecondition.Error()+": "))
	}
	return nil
}

var jobUpdatable = []string{"description", "display_name"}

func (s *jobService) UpdateMigrationJob(ctx context.Context, req *ferryv1.UpdateMigrationJobRequest) (*ferryv1.MigrationJob, error) {
	j, err := s.update(ctx, req)
	return reply(ctx, s.a, j, err)
}

func (s *jobService) update(ctx context.Context, req *ferryv1.UpdateMigrationJobRequest) (*ferryv1.MigrationJob, error) {
	in := req.GetMigrationJob()
	if in == nil {
		return nil, invalid("migration_job", "required: the job's name and the new values")
	}
	c := &checker{}
	checkRef(c, "migration_job.name", in.GetName(), colJobs)
	paths := updatePaths(c, req.GetUpdateMask(), jobUpdatable, "migration_job")
	checkText(c, "migration_job.display_name", in.GetDisplayName(), maxDisplayName)
	checkDescription(c, "migration_job.description", in.GetDescription())
	if err := c.err(); err != nil {
		return nil, err
	}
	if _, ok := s.a.ledger.Job(in.GetName()); !ok {
		return nil, notFound("migration_job.name", in.GetName())
	}
	label := &ferryv1.MigrationJob{Name: in.GetName(), DisplayName: in.GetDisplayName(), Description: in.GetDescription()}
	err := s.a.proposeUpdate(ctx, &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_MigrationJob{MigrationJob: label}, Paths: paths, Etag: in.GetEtag()}, "migration_job")
	return s.readJob(in.GetName(), err)
}
