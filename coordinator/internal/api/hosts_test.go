package api

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func TestSetHostMaintenance(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	set := func(req *ferryv1.SetHostMaintenanceRequest) (*ferryv1.Host, error) {
		r, err := e.inv.SetHostMaintenance(c, req)
		return r.GetHost(), err
	}
	h := must[*ferryv1.Host](t)(set(&ferryv1.SetHostMaintenanceRequest{Name: "hosts/spare", Maintenance: true, RequestId: "m-1"}))
	if !h.GetMaintenance() || h.GetName() != "hosts/spare" || h.GetCluster() != "clusters/c1" {
		t.Fatalf("after --on: %v", h)
	}
	// The agent says hello again: its facts change, maintenance stays.
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
		Name: "hosts/spare", Cluster: "clusters/c1", Connected: true, Facts: &ferryv1.HostFacts{Cpus: 8}}}}})
	h = must[*ferryv1.Host](t)(e.inv.GetHost(c, &ferryv1.GetHostRequest{Name: "hosts/spare"}))
	if !h.GetMaintenance() || h.GetFacts().GetCpus() != 8 || !h.GetConnected() {
		t.Fatalf("after a hello: %v", h)
	}
	h = must[*ferryv1.Host](t)(set(&ferryv1.SetHostMaintenanceRequest{Name: "hosts/spare", RequestId: "m-2"}))
	if h.GetMaintenance() {
		t.Fatalf("after --off: %v", h)
	}
	// A retried "on" (same request_id) answers the host as it is and changes nothing.
	h = must[*ferryv1.Host](t)(set(&ferryv1.SetHostMaintenanceRequest{Name: "hosts/spare", Maintenance: true, RequestId: "m-1"}))
	if h.GetMaintenance() {
		t.Fatalf("a replayed request_id changed the host: %v", h)
	}
	if n := strings.Count(e.logs.String(), `msg="host maintenance" component=api host=hosts/spare`); n != 2 {
		t.Errorf("%d log lines of maintenance changes, want 2 (on, off; not the replay):\n%s", n, e.logs.String())
	}

	for _, tt := range []struct {
		name string
		req  *ferryv1.SetHostMaintenanceRequest
		code codes.Code
		msg  string
	}{
		{"no name", &ferryv1.SetHostMaintenanceRequest{Maintenance: true}, codes.InvalidArgument, "name: required: a hosts/{id} name"},
		{"not a host", &ferryv1.SetHostMaintenanceRequest{Name: "clusters/c1"}, codes.InvalidArgument, `name: "clusters/c1" is not a hosts/{id} name`},
		{"missing host", &ferryv1.SetHostMaintenanceRequest{Name: "hosts/nope", Maintenance: true}, codes.NotFound, "name: host hosts/nope not found"},
		{"request_id of another host", &ferryv1.SetHostMaintenanceRequest{Name: "hosts/kvm1", Maintenance: true, RequestId: "m-1"}, codes.InvalidArgument, "request_id: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := set(tt.req)
			wantCode(t, err, tt.code, tt.msg)
		})
	}
}
