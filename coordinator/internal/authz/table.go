package authz

import "github.com/ferry-v2v/ferry/pkg/tlsutil"

// Who may call what. Every method the coordinator serves has one entry;
// a method without one is refused to everybody (and fails
// TestEveryServedMethodHasARule in the server package), so a new method
// is never open by accident.
//
// The roles:
//   - operator: every ferry.v1 method, and reflection.
//   - viewer: reads only (Get, List, Watch, Preview, ListMembers), and
//     reflection.
//   - agent: the agent stream only (AgentService.Connect) and health.
//   - coordinator: what one coordinator calls on another by itself:
//     joining and leaving the cluster (AddVoter, RemoveVoter, ListMembers)
//     and health. A coordinator forwarding a caller's call to the leader
//     is authorized as that caller, never as a coordinator.
//
// gRPC health is open to every certificate of the install (load balancers
// and agents probe it; it says nothing but SERVING). Reflection describes
// the public API only, to operators and viewers (grpcurl); agents and
// coordinators have no use for it.
var table = map[string]roleSet{
	"/ferry.v1.MembershipService/ListMembers": readers | coordinator,
	"/ferry.v1.MembershipService/AddVoter":    operator | coordinator,
	"/ferry.v1.MembershipService/RemoveVoter": operator | coordinator,

	"/ferry.v1.CertificateService/RevokeCertificate":       operator,
	"/ferry.v1.CertificateService/ListRevokedCertificates": readers,

	"/ferry.v1.MigrationJobService/CreateMigrationJobs":  operator,
	"/ferry.v1.MigrationJobService/PreviewMigrationJobs": readers,
	"/ferry.v1.MigrationJobService/GetMigrationJob":      readers,
	"/ferry.v1.MigrationJobService/ListMigrationJobs":    readers,
	"/ferry.v1.MigrationJobService/CancelMigrationJob":   operator,
	"/ferry.v1.MigrationJobService/CutoverMigrationJob":  operator,
	"/ferry.v1.MigrationJobService/RestartMigrationJob":  operator,
	"/ferry.v1.MigrationJobService/DeleteMigrationJob":   operator,
	"/ferry.v1.MigrationJobService/UpdateMigrationJob":   operator,
	"/ferry.v1.MigrationJobService/WatchMigrationJobs":   readers,
	"/ferry.v1.MigrationJobService/CreateExportJobs":     operator,
	"/ferry.v1.MigrationJobService/GetBundleSigningKey":  readers,

	"/ferry.v1.MigrationServerService/CreateMigrationServer":       operator,
	"/ferry.v1.MigrationServerService/GetMigrationServer":          readers,
	"/ferry.v1.MigrationServerService/GetMigrationServerUsage":     readers,
	"/ferry.v1.MigrationServerService/ListMigrationServers":        readers,
	"/ferry.v1.MigrationServerService/DeleteMigrationServer":       operator,
	"/ferry.v1.MigrationServerService/EnableMigrationServer":       operator,
	"/ferry.v1.MigrationServerService/DisableMigrationServer":      operator,
	"/ferry.v1.MigrationServerService/SetMigrationServerBandwidth": operator,
	"/ferry.v1.MigrationServerService/UpdateMigrationServer":       operator,

	"/ferry.v1.TargetInventoryService/CreateCluster":           operator,
	"/ferry.v1.TargetInventoryService/GetCluster":              readers,
	"/ferry.v1.TargetInventoryService/ListClusters":            readers,
	"/ferry.v1.TargetInventoryService/DeleteCluster":           operator,
	"/ferry.v1.TargetInventoryService/UpdateCluster":           operator,
	"/ferry.v1.TargetInventoryService/UpdatePrimaryStorage":    operator,
	"/ferry.v1.TargetInventoryService/UpdateL3Network":         operator,
	"/ferry.v1.TargetInventoryService/GetHost":                 readers,
	"/ferry.v1.TargetInventoryService/ListHosts":               readers,
	"/ferry.v1.TargetInventoryService/SetHostMaintenance":      operator,
	"/ferry.v1.TargetInventoryService/CreatePrimaryStorage":    operator,
	"/ferry.v1.TargetInventoryService/GetPrimaryStorage":       readers,
	"/ferry.v1.TargetInventoryService/ListPrimaryStorages":     readers,
	"/ferry.v1.TargetInventoryService/DeletePrimaryStorage":    operator,
	"/ferry.v1.TargetInventoryService/CreateL3Network":         operator,
	"/ferry.v1.TargetInventoryService/GetL3Network":            readers,
	"/ferry.v1.TargetInventoryService/ListL3Networks":          readers,
	"/ferry.v1.TargetInventoryService/DeleteL3Network":         operator,
	"/ferry.v1.TargetInventoryService/ReleaseL3NetworkAddress": operator,

	"/ferry.v1.SettingsService/GetSettings":    readers,
	"/ferry.v1.SettingsService/UpdateSettings": operator,

	"/ferry.v1.NetworkMappingService/CreateNetworkMappingGroup": operator,
	"/ferry.v1.NetworkMappingService/GetNetworkMappingGroup":    readers,
	"/ferry.v1.NetworkMappingService/ListNetworkMappingGroups":  readers,
	"/ferry.v1.NetworkMappingService/UpdateNetworkMappingGroup": operator,
	"/ferry.v1.NetworkMappingService/DeleteNetworkMappingGroup": operator,

	"/ferry.v1.SourceService/CreateSource":     operator,
	"/ferry.v1.SourceService/GetSource":        readers,
	"/ferry.v1.SourceService/ListSources":      readers,
	"/ferry.v1.SourceService/DeleteSource":     operator,
	"/ferry.v1.SourceService/CreateCredential": operator,
	"/ferry.v1.SourceService/GetCredential":    readers,
	"/ferry.v1.SourceService/ListCredentials":  readers,
	"/ferry.v1.SourceService/DeleteCredential": operator,
	"/ferry.v1.SourceService/UpdateCredential": operator,
	"/ferry.v1.SourceService/UpdateSource":     operator,
	// Listing a source's VMs reads the ledger's copy of its inventory; a
	// source never synced is synced first, as a read would be answered.
	"/ferry.v1.SourceService/ListSourceVMs":       readers,
	"/ferry.v1.SourceService/SyncSource":          operator,
	"/ferry.v1.SourceService/ListSourceInventory": readers,

	// The audit trail names who did what: operators and viewers read it.
	"/ferry.v1.AuditService/ListAuditEvents": readers,

	// Not a gRPC method: the HTTPS /metrics endpoint of a coordinator
	// (--metrics-listen on a non-loopback address) serves the scrapers
	// whose client certificate has one of these roles.
	MetricsPath: readers,

	"/ferry.agent.v1.AgentService/Connect": agent,

	"/grpc.health.v1.Health/Check": everyone,
	"/grpc.health.v1.Health/Watch": everyone,
	"/grpc.health.v1.Health/List":  everyone,

	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      readers,
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": readers,
}

// MetricsPath is the table's key of the /metrics endpoint.
const MetricsPath = "/metrics"

// roleSet is a set of roles, one bit each.
type roleSet uint8

const (
	coordinator roleSet = 1 << iota
	agent
	operator
	viewer

	readers  = operator | viewer
	everyone = coordinator | agent | operator | viewer
)

var roleBits = map[tlsutil.Role]roleSet{
	tlsutil.RoleIDCoordinator: coordinator,
	tlsutil.RoleIDAgent:       agent,
	tlsutil.RoleIDOperator:    operator,
	tlsutil.RoleIDViewer:      viewer,
}

func (s roleSet) has(r tlsutil.Role) bool { return s&roleBits[r] != 0 }

// Rule reports the roles that may call fullMethod, and whether it has a
// rule at all.
func Rule(fullMethod string) ([]tlsutil.Role, bool) {
	set, ok := table[fullMethod]
	if !ok {
		return nil, false
	}
	var out []tlsutil.Role
	for _, r := range []tlsutil.Role{tlsutil.RoleIDCoordinator, tlsutil.RoleIDAgent, tlsutil.RoleIDOperator, tlsutil.RoleIDViewer} {
		if set.has(r) {
			out = append(out, r)
		}
	}
	return out, true
}

// Allowed reports whether role may call fullMethod.
func Allowed(role tlsutil.Role, fullMethod string) bool {
	return table[fullMethod].has(role)
}

// Methods lists every method that has a rule.
func Methods() []string {
	out := make([]string, 0, len(table))
	for m := range table {
		out = append(out, m)
	}
	return out
}
