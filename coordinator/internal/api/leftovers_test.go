package api

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func cachePath(p string) func(context.Context, *env) error {
	return createServer(func(m *ferryv1.MigrationServer) { m.CachePath = p })
}

func createCredential(secret string) func(context.Context, *env) error {
	return func(c context.Context, e *env) error {
		_, err := e.sources.CreateCredential(c, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
			Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: secret}})
		return err
	}
}

// leftoverBadInputs are what a bad-input probe still got through.
var leftoverBadInputs = []badInput{
	{"cache path /", cachePath("/"), codes.InvalidArgument,
		`migration_server.cache_path: "/" is a system directory; give a directory of Ferry's own, such as /var/cache/ferry`},
	{"cache path /etc", cachePath("/etc"), codes.InvalidArgument, `migration_server.cache_path: "/etc" is a system directory`},
	{"cache path /var", cachePath("/var"), codes.InvalidArgument, `migration_server.cache_path: "/var" is a system directory`},
	{"cache path /usr/lib", cachePath("/usr/lib"), codes.InvalidArgument, `migration_server.cache_path: "/usr/lib" is a system directory`},
	{"cache path under /proc", cachePath("/proc/1/root"), codes.InvalidArgument, `migration_server.cache_path: "/proc/1/root" is a system directory`},
	{"cache path /root", cachePath("/root"), codes.InvalidArgument, `migration_server.cache_path: "/root" is a system directory`},
	{"cache path /./etc/ (not clean)", cachePath("/./etc/"), codes.InvalidArgument, `migration_server.cache_path: "/./etc/" is not clean; did you mean "/etc"?`},
	{"secret with NUL", createCredential("pass\x00word"), codes.InvalidArgument, "credential.secret: must not contain a NUL byte"},
	{"partial spec from a missing source", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Source = "sources/nope"
		r.Jobs[0].Target = &ferryv1.TargetVm{Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs"}
	}), codes.NotFound, "source: sources/nope not found"},
	{"spec without target from a missing source", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Source = "sources/nope"
		r.Jobs[0].Target = nil
	}), codes.NotFound, "source: sources/nope not found"},
}

// TestLeftoverBadInputs: each is refused with its code and field, and
// neither the ledger nor the applied index moves (runBadInputs).
func TestLeftoverBadInputs(t *testing.T) { runBadInputs(t, leftoverBadInputs) }

// TestRefusalQuotesAtMost128Bytes: a message quotes the first 128 bytes
// of an offending value, cut on a rune boundary, then an ellipsis.
func TestRefusalQuotesAtMost128Bytes(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	long := strings.Repeat("é", 100) + "/" + strings.Repeat("x", 4000) // 'é' is 2 bytes
	_, err := e.jobs.CreateMigrationJobs(c, jobsReqWith(target(func(t *ferryv1.TargetVm) { t.VmName = long })))
	want := `jobs[0].target.vm_name: "` + strings.Repeat("é", 64) + `…" must not contain '/'`
	if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != want {
		t.Fatalf("long vm_name: %v, want INVALID_ARGUMENT %q", err, want)
	}
	_, err = e.servers.CreateMigrationServer(c, validServer(func(m *ferryv1.MigrationServer) { m.UpstreamBandwidth = strings.Repeat("9", 1000) + "Mbps" }))
	want = `migration_server.upstream_bandwidth: "` + strings.Repeat("9", 128) + `…" must be between 8Kbps and 32Gbps (e.g. 500Mbps; empty for unlimited)`
	if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != want {
		t.Fatalf("long bandwidth: %v, want INVALID_ARGUMENT %q", err, want)
	}
	_, err = e.jobs.CreateMigrationJobs(c, jobsReqWith(target(func(t *ferryv1.TargetVm) { t.Cluster = "clusters/" + strings.Repeat("a", 300) })))
	if msg := status.Convert(err).Message(); len(msg) > 128+200 {
		t.Fatalf("long cluster name: message of %d bytes: %q", len(msg), msg)
	}
}
