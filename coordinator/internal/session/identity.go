package session

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/pkg/hostname"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Bounds of what an agent reports about its host: generous for any real
// host, small enough that no agent can bloat the ledger.
const (
	maxFactText       = 128  // versions, interface names, addresses
	maxFactPath       = 4096 // storage paths
	maxFactInterfaces = 256
	maxFactAddresses  = 64 // per interface
	maxFactStorages   = 256
)

// checkIdentity refuses a hello whose host is not the one the agent's
// certificate names (ferry://agent/HOST says hello as HOST only). A
// coordinator without authorization (--insecure) has no identities to
// check.
func (s *session) checkIdentity(host string) error {
	if !s.authed {
		return nil
	}
	if s.identity.Name != host {
		return status.Errorf(codes.PermissionDenied, "the certificate of %s may only say hello as host %s, not \"%s\"",
			s.identity, s.identity.Name, hostname.Quote(host))
	}
	return nil
}

// mayReceive checks, before a source's secrets are sent on s, that s is
// the session of host (hosts/{id}) and its certificate is host's agent.
// Hello already binds the two; this keeps the secrets to that binding
// should a session ever be filed under another host.
func (s *session) mayReceive(host string) error {
	if host != "" && HostName(host) != s.host {
		return fmt.Errorf("the session of %s is not %s's", s.host, host)
	}
	if s.authed && HostName(s.identity.Name) != s.host {
		return fmt.Errorf("the session of %s belongs to %s", s.host, s.identity)
	}
	return nil
}

// checkHello validates what a hello would write to the ledger.
func checkHello(h *agentv1.Hello) error {
	if h.GetHostName() == "" {
		return status.Error(codes.InvalidArgument, "hello.host_name is required")
	}
	if err := hostname.Validate(h.GetHostName()); err != nil {
		return status.Errorf(codes.InvalidArgument, "hello.host_name: %v", err)
	}
	if c := strings.TrimPrefix(h.GetCluster(), "clusters/"); c != "" {
		if err := hostname.Validate(c); err != nil {
			return status.Errorf(codes.InvalidArgument, "hello.cluster: %v", err)
		}
	}
	if err := hostname.ValidateText(h.GetAgentVersion(), maxFactText); err != nil {
		return status.Errorf(codes.InvalidArgument, "hello.agent_version: %v", err)
	}
	if err := checkFacts("hello.facts", h.GetFacts()); err != nil {
		return err
	}
	return nil
}

// checkFacts validates a host's facts from a hello or a heartbeat.
func checkFacts(field string, f *ferryv1.HostFacts) error {
	bad := func(sub string, err error) error {
		return status.Errorf(codes.InvalidArgument, "%s.%s: %v", field, sub, err)
	}
	if err := hostname.ValidateText(f.GetLibvirtVersion(), maxFactText); err != nil {
		return bad("libvirt_version", err)
	}
	if err := hostname.ValidateText(f.GetQemuVersion(), maxFactText); err != nil {
		return bad("qemu_version", err)
	}
	if n := len(f.GetInterfaces()); n > maxFactInterfaces {
		return bad("interfaces", fmt.Errorf("%d interfaces, at most %d", n, maxFactInterfaces))
	}
	for i, nic := range f.GetInterfaces() {
		if err := hostname.ValidateText(nic.GetName(), maxFactText); err != nil {
			return bad(fmt.Sprintf("interfaces[%d].name", i), err)
		}
		if n := len(nic.GetAddresses()); n > maxFactAddresses {
			return bad(fmt.Sprintf("interfaces[%d].addresses", i), fmt.Errorf("%d addresses, at most %d", n, maxFactAddresses))
		}
		for j, a := range nic.GetAddresses() {
			if err := hostname.ValidateText(a, maxFactText); err != nil {
				return bad(fmt.Sprintf("interfaces[%d].addresses[%d]", i, j), err)
			}
		}
	}
	if n := len(f.GetStorages()); n > maxFactStorages {
		return bad("storages", fmt.Errorf("%d storages, at most %d", n, maxFactStorages))
	}
	for i, st := range f.GetStorages() {
		if err := hostname.ValidateText(st.GetPath(), maxFactPath); err != nil {
			return bad(fmt.Sprintf("storages[%d].path", i), err)
		}
	}
	return nil
}
