package api

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/coordinator/internal/admission"
	"github.com/ferry-v2v/ferry/coordinator/internal/capacity"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// serverService is ferry.v1.MigrationServerService.
type serverService struct {
	ferryv1.UnimplementedMigrationServerServiceServer
	a *API
}

func (s *serverService) CreateMigrationServer(ctx context.Context, req *ferryv1.CreateMigrationServerRequest) (*ferryv1.MigrationServer, error) {
	ms, err := s.create(ctx, req)
	return reply(ctx, s.a, ms, err)
}

// create gives a host the migration role. A new server is enabled; the
// enabled field of the request is ignored (proto3 cannot tell false from
// absent) and DisableMigrationServer turns it off.
func (s *serverService) create(ctx context.Context, req *ferryv1.CreateMigrationServerRequest) (*ferryv1.MigrationServer, error) {
	in := req.GetMigrationServer()
	if in == nil {
		return nil, invalid("migration_server", "required")
	}
	if names, ok, err := s.a.firstRequest(req.GetRequestId(), colServers); err != nil || ok {
		return s.read(firstName(names), err)
	}
	ms, err := s.validate(req, in)
	if err != nil {
		return nil, err
	}
	if _, ok := s.a.ledger.Host(ms.Host); !ok {
		return nil, &fieldError{Code: codes.NotFound, Field: "migration_server.host", Msg: fmt.Sprintf(
			"%s not found; a host registers itself when its ferry-agent first connects: start ferry-agent --host-name %s first",
			ms.Host, strings.TrimPrefix(ms.Host, colHosts+"/"))}
	}
	if other, ok := s.a.ledger.MigrationServerOfHost(ms.Host); ok {
		return nil, precondition("migration_server.host", "host %s is already migration server %s of type %s; delete that migration server first",
			ms.Host, other.GetName(), platformName(other.GetType()))
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: ms, RequestId: req.GetRequestId()}}}
	name, err := s.a.createOne(ctx, req.GetRequestId(), colServers, cmd)
	return s.read(name, err)
}

func (s *serverService) validate(req *ferryv1.CreateMigrationServerRequest, in *ferryv1.MigrationServer) (*ferryv1.MigrationServer, error) {
	c := &checker{}
	checkRequestID(c, req.GetRequestId())
	ms := &ferryv1.MigrationServer{
		Name:        s.a.newName(c, "migration_server.name", in.GetName(), colServers),
		DisplayName: in.GetDisplayName(),
		Host:        in.GetHost(),
		Type:        in.GetType(),
		CachePath:   in.GetCachePath(),
		Enabled:     true,
	}
	checkText(c, "migration_server.display_name", ms.DisplayName, maxDisplayName)
	checkRef(c, "migration_server.host", ms.Host, colHosts)
	checkEnum(c, "migration_server.type", ms.Type, true)
	if ms.Type == ferryv1.Platform_PLATFORM_BUNDLE {
		c.add("migration_server.type", "a migration server is vmware or kvm; any of them reads bundle sources")
	}
	checkCachePath(c, "migration_server.cache_path", ms.CachePath)
	if cidr := in.GetMigrationCidr(); cidr != "" {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			c.add("migration_server.migration_cidr", "%q is not a CIDR such as 10.20.0.0/24", cidr)
		} else {
			ms.MigrationCidr = p.Masked().String()
		}
	}
	ms.UpstreamBitsPerSecond, ms.UpstreamBandwidth = bandwidthLimit(c, "migration_server.upstream_bandwidth", in.GetUpstreamBandwidth())
	ms.DownstreamBitsPerSecond, ms.DownstreamBandwidth = bandwidthLimit(c, "migration_server.downstream_bandwidth", in.GetDownstreamBandwidth())
	ms.VirtioWinIso = in.GetVirtioWinIso()
	checkVirtioWinISO(c, "migration_server.virtio_win_iso", ms.VirtioWinIso)
	return ms, c.err()
}

func platformName(p ferryv1.Platform) string { return admission.PlatformName(p) }

// read returns a server as the API shows it, with its host's connection.
func (s *serverService) read(name string, err error) (*ferryv1.MigrationServer, error) {
	if err != nil {
		return nil, err
	}
	ms, err := lookup(s.a.ledger.MigrationServer, name, "migration server")
	if err != nil {
		return nil, err
	}
	return s.a.withConnected(ms), nil
}

// withConnected fills the output-only fields of ms: whether its host is
// connected, and its cache's room as the scheduler weighs it (the free
// space the host last reported at cache_path, live on the leader, less
// what the server's running jobs reserve: package capacity).
func (a *API) withConnected(ms *ferryv1.MigrationServer) *ferryv1.MigrationServer {
	h, ok := a.ledger.Host(ms.GetHost())
	ms.Connected = ok && h.GetConnected()
	facts := h.GetFacts()
	// The leader's sessions hold the latest facts; the ledger's copy is
	// a checkpoint interval old.
	if lf, ok := a.agents.(interface {
		Hosts() map[string]*ferryv1.HostFacts
	}); ok {
		if f, ok := lf.Hosts()[ms.GetHost()]; ok {
			facts = f
		}
	}
	running := a.ledger.Jobs(ledger.JobFilter{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING, MigrationServer: ms.GetName()})
	room := capacity.Cache(ms, facts, capacity.Reserved(ms.GetName(), running))
	ms.CacheReservedBytes = room.Reserved
	if room.Known {
		ms.CacheFreeBytes = room.Available()
		for _, st := range facts.GetStorages() {
			if st.GetPath() == ms.GetCachePath() {
				ms.CacheTotalBytes = st.GetTotalBytes()
			}
		}
	}
	return ms
}

func (s *serverService) GetMigrationServer(ctx context.Context, req *ferryv1.GetMigrationServerRequest) (*ferryv1.MigrationServer, error) {
	err := checkName(req.GetName(), colServers)
	ms, err := s.read(req.GetName(), err)
	return reply(ctx, s.a, ms, err)
}

func (s *serverService) ListMigrationServers(ctx context.Context, req *ferryv1.ListMigrationServersRequest) (*ferryv1.ListMigrationServersResponse, error) {
	c := &checker{}
	checkEnum(c, "type", req.GetType(), false)
	if req.GetType() == ferryv1.Platform_PLATFORM_BUNDLE {
		c.add("type", "no migration server is of type bundle: any of them reads bundle sources")
	}
	if err := c.err(); err != nil {
		return reply[*ferryv1.ListMigrationServersResponse](ctx, s.a, nil, err)
	}
	page, next, err := paginate(s.a.ledger.MigrationServers(req.GetType()), req.GetPageSize(), req.GetPageToken())
	for _, ms := range page {
		s.a.withConnected(ms)
	}
	return reply(ctx, s.a, &ferryv1.ListMigrationServersResponse{MigrationServers: page, NextPageToken: next}, err)
}

// DeleteMigrationServer deletes a server; the ledger cancels its queued
// and running jobs in the same command and names them.
func (s *serverService) DeleteMigrationServer(ctx context.Context, req *ferryv1.DeleteMigrationServerRequest) (*ferryv1.DeleteMigrationServerResponse, error) {
	if err := checkName(req.GetName(), colServers); err != nil {
		return reply[*ferryv1.DeleteMigrationServerResponse](ctx, s.a, nil, err)
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_DeleteMigrationServer{DeleteMigrationServer: &ledgerv1.DeleteResource{Name: req.GetName()}}}
	cancelled, err := s.a.propose(ctx, cmd)
	return reply(ctx, s.a, &ferryv1.DeleteMigrationServerResponse{CancelledJobs: cancelled}, err)
}

func (s *serverService) EnableMigrationServer(ctx context.Context, req *ferryv1.EnableMigrationServerRequest) (*ferryv1.EnableMigrationServerResponse, error) {
	ms, err := s.setEnabled(ctx, req.GetName(), true, req.GetRequestId())
	return reply(ctx, s.a, &ferryv1.EnableMigrationServerResponse{MigrationServer: ms}, err)
}

func (s *serverService) DisableMigrationServer(ctx context.Context, req *ferryv1.DisableMigrationServerRequest) (*ferryv1.DisableMigrationServerResponse, error) {
	ms, err := s.setEnabled(ctx, req.GetName(), false, req.GetRequestId())
	return reply(ctx, s.a, &ferryv1.DisableMigrationServerResponse{MigrationServer: ms}, err)
}

func (s *serverService) setEnabled(ctx context.Context, name string, enabled bool, requestID string) (*ferryv1.MigrationServer, error) {
	method := "DisableMigrationServer"
	if enabled {
		method = "EnableMigrationServer"
	}
	c := &checker{}
	checkRef(c, "name", name, colServers)
	checkRequestID(c, requestID)
	if err := c.err(); err != nil {
		return nil, err
	}
	again, err := s.a.replayed(requestID, method, name)
	if err == nil && !again {
		cmd := &ledgerv1.Command{Op: &ledgerv1.Command_SetMigrationServerEnabled{
			SetMigrationServerEnabled: &ledgerv1.SetMigrationServerEnabled{Name: name, Enabled: enabled}}}
		_, err = s.a.propose(ctx, withRequest(cmd, requestID, method, name))
	}
	return s.read(name, err)
}

// SetMigrationServerBandwidth changes the limits present in the request;
// an empty value clears a limit back to unlimited.
func (s *serverService) SetMigrationServerBandwidth(ctx context.Context, req *ferryv1.SetMigrationServerBandwidthRequest) (*ferryv1.SetMigrationServerBandwidthResponse, error) {
	ms, err := s.setBandwidth(ctx, req)
	return reply(ctx, s.a, &ferryv1.SetMigrationServerBandwidthResponse{MigrationServer: ms}, err)
}

func (s *serverService) setBandwidth(ctx context.Context, req *ferryv1.SetMigrationServerBandwidthRequest) (*ferryv1.MigrationServer, error) {
	c := &checker{}
	checkRef(c, "name", req.GetName(), colServers)
	set := &ledgerv1.SetMigrationServerBandwidth{Name: req.GetName()}
	if req.UpstreamBandwidth == nil && req.DownstreamBandwidth == nil {
		c.add("upstream_bandwidth", "set upstream_bandwidth, downstream_bandwidth or both (an empty value means unlimited)")
	}
	if req.UpstreamBandwidth != nil {
		bps, canonical := bandwidthLimit(c, "upstream_bandwidth", req.GetUpstreamBandwidth())
		set.UpstreamBandwidth, set.UpstreamBitsPerSecond = proto.String(canonical), proto.Int64(bps)
	}
	if req.DownstreamBandwidth != nil {
		bps, canonical := bandwidthLimit(c, "downstream_bandwidth", req.GetDownstreamBandwidth())
		set.DownstreamBandwidth, set.DownstreamBitsPerSecond = proto.String(canonical), proto.Int64(bps)
	}
	checkRequestID(c, req.GetRequestId())
	if err := c.err(); err != nil {
		return nil, err
	}
	const method = "SetMigrationServerBandwidth"
	again, err := s.a.replayed(req.GetRequestId(), method, req.GetName())
	if err == nil && !again {
		cmd := &ledgerv1.Command{Op: &ledgerv1.Command_SetMigrationServerBandwidth{SetMigrationServerBandwidth: set}}
		_, err = s.a.propose(ctx, withRequest(cmd, req.GetRequestId(), method, req.GetName()))
	}
	return s.read(req.GetName(), err)
}

// systemDirs are directories a cache must never be: the agent makes and
// reclaims job directories under the cache path. Below the virtual file
// systems (/proc, /sys, /dev) nothing may be a cache either.
var systemDirs = map[string]bool{
	"/": true, "/bin": true, "/boot": true, "/dev": true, "/etc": true, "/home": true,
	"/lib": true, "/lib32": true, "/lib64": true, "/libx32": true, "/media": true, "/mnt": true,
	"/opt": true, "/proc": true, "/root": true, "/run": true, "/sbin": true, "/srv": true,
	"/sys": true, "/tmp": true, "/usr": true, "/var": true,
	"/usr/bin": true, "/usr/lib": true, "/usr/lib64": true, "/usr/local": true, "/usr/sbin": true, "/usr/share": true,
	"/var/cache": true, "/var/lib": true, "/var/log": true, "/var/run": true, "/var/tmp": true,
}

// checkCachePath requires an absolute, clean path that is not a system
// directory.
func checkCachePath(c *checker, field, p string) {
	n := c.Len()
	checkAbsPath(c, field, p, "the cache directory on the host")
	if c.Len() > n {
		return
	}
	clean := filepath.Clean(p)
	if systemDirs[clean] || underAny(clean, "/proc", "/sys", "/dev") {
		c.add(field, "%q is a system directory; give a directory of Ferry's own, such as /var/cache/ferry", p)
	}
}

func underAny(p string, dirs ...string) bool {
	for _, d := range dirs {
		if strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// checkVirtioWinISO checks an optional virtio-win ISO path: absolute and
// clean when given.
func checkVirtioWinISO(c *checker, field, p string) {
	if p != "" {
		checkAbsPath(c, field, p, "the virtio-win ISO on the migration server's host")
	}
}
