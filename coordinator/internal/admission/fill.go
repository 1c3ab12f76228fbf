package admission

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/targetspec"
)

// fillBatch completes the specs of req that leave something out (see
// targetspec.Incomplete) from the source VMs' descriptions, with the
// request's network-mapping group; it returns req itself when no spec
// needs it. Without agent sessions to read the source through, specs are
// left as they are and validation names what is missing; when the source
// cannot be read, validation's answer comes first too. resync is as for
// precheck; syncs keep what it reads from the source. The notes are
// targetspec.Fill's, each field prefixed with its job
// (jobs[0].target.nics[1].ip: …).
func (a *Admission) fillBatch(ctx context.Context, req *ferryv1.CreateMigrationJobsRequest, resync bool, syncs *batchSyncs) (*ferryv1.CreateMigrationJobsRequest, []string, error) {
	group, err := a.mappingGroup(req)
	if err != nil {
		return nil, nil, err
	}
	need := false
	for _, s := range req.GetJobs() {
		need = need || s.GetSourceVm() != "" && targetspec.Incomplete(s)
	}
	if !need {
		return req, nil, nil
	}
	// A spec to fill from a source that does not exist: that is the
	// answer, whatever else the spec lacks.
	c := &validate.Checker{}
	validate.Ref(c, "source", req.GetSource(), validate.Sources)
	if _, ok := a.ledger.Source(req.GetSource()); c.OK() && !ok {
		return nil, nil, validate.NotFound("source", req.GetSource())
	}
	if a.agents == nil {
		return req, nil, nil
	}
	vms, err := a.readSourceVMs(ctx, req, resync, syncs)
	if err != nil {
		// What the spec lacks says more than why the source could not be read.
		if _, verr := a.checkBatch(req); verr != nil {
			return nil, nil, verr
		}
		return nil, nil, err
	}
	var notes []string
	out := proto.Clone(req).(*ferryv1.CreateMigrationJobsRequest)
	opts := targetspec.Options{Group: group, Networks: a.ledger.L3Networks("")}
	for i, spec := range out.GetJobs() {
		if spec.GetSourceVm() == "" || !targetspec.Incomplete(spec) {
			continue
		}
		vm := findSourceVM(vms, spec.GetSourceVm())
		if vm == nil {
			return nil, nil, validate.NotFoundf(fmt.Sprintf("jobs[%d].source_vm", i), "VM %q at %s", spec.GetSourceVm(), req.GetSource())
		}
		filled, err := targetspec.Fill(spec, vm, opts)
		if err != nil {
			var fe *targetspec.Error
			if errors.As(err, &fe) {
				return nil, nil, validate.Precondition(fmt.Sprintf("jobs[%d].%s", i, fe.Field), "%s", fe.Reason)
			}
			return nil, nil, err
		}
		for _, n := range filled {
			notes = append(notes, fmt.Sprintf("jobs[%d].%s", i, n))
		}
	}
	return out, notes, nil
}

// mappingGroup reads the request's network-mapping group, nil when it
// names none.
func (a *Admission) mappingGroup(req *ferryv1.CreateMigrationJobsRequest) (*ferryv1.NetworkMappingGroup, error) {
	name := req.GetNetworkMappingGroup()
	if name == "" {
		return nil, nil
	}
	c := &validate.Checker{}
	validate.Ref(c, "network_mapping_group", name, validate.Mappings)
	if err := c.Err(); err != nil {
		return nil, err
	}
	g, ok := a.ledger.NetworkMappingGroup(name)
	if !ok {
		return nil, validate.NotFound("network_mapping_group", name)
	}
	if g.GetSource() != "" && g.GetSource() != req.GetSource() {
		return nil, validate.Precondition("network_mapping_group", "%s maps the networks of %s, not of %s; use a group of this source or of any source",
			name, g.GetSource(), req.GetSource())
	}
	return g, nil
}

// readSourceVMs reads the source's VMs from its synced inventory in the
// ledger, syncing it first (into syncs) through the request's migration
// server when it never was or lacks a VM the request fills from.
func (a *Admission) readSourceVMs(ctx context.Context, req *ferryv1.CreateMigrationJobsRequest, resync bool, syncs *batchSyncs) ([]*ferryv1.SourceVm, error) {
	refs, err := a.resolveBatch(req)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, spec := range req.GetJobs() {
		if spec.GetSourceVm() != "" && targetspec.Incomplete(spec) {
			ids = append(ids, spec.GetSourceVm())
		}
	}
	inv, ok := syncs.inventory(refs.source.GetName())
	if !ok || resync && !hasVMs(inv, ids) {
		// Never synced, or a VM made since the last sync: read it now.
		if err := syncs.sync(ctx, refs.source.GetName(), refs.server.GetName()); err != nil {
			return nil, fmt.Errorf("read the VMs of %s to fill the specs: %w", refs.source.GetName(), err)
		}
	}
	inv, ok = syncs.inventory(refs.source.GetName())
	if !ok {
		return nil, validate.Precondition("source", "%s has no synced inventory to fill the specs from; run ferryctl source sync %s or give the full target",
			refs.source.GetName(), refs.source.GetName())
	}
	return inv.GetVms(), nil
}

func findSourceVM(vms []*ferryv1.SourceVm, id string) *ferryv1.SourceVm {
	for _, v := range vms {
		if v.GetId() == id || v.GetName() == id || v.GetUuid() == id {
			return v
		}
	}
	return nil
}
