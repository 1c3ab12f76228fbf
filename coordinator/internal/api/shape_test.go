package api_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/ferry-v2v/ferry/coordinator/internal/api"
	"github.com/ferry-v2v/ferry/coordinator/internal/authz"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// deleteAnswers are the Delete methods that answer more than nothing, and
// why: AIP-135 allows it when the client needs what the delete did.
var deleteAnswers = map[string]string{
	"ferry.v1.MigrationServerService.DeleteMigrationServer": "answers the jobs it cancelled",
}

// readsOnLeader are custom methods served by the leader (so forwarded as
// writes are) that change nothing, and need no request_id.
var readsOnLeader = map[string]string{
	"ferry.v1.MigrationJobService.PreviewMigrationJobs": "checks a batch and writes nothing",
}

// TestAPIShapes keeps ferry.v1 in the shapes a client author expects (see
// docs/api.md, "Services of ferry.v1"): it reads the descriptors the
// generated code registers, so a proto change that breaks a rule fails
// here before `buf breaking` makes it permanent.
func TestAPIShapes(t *testing.T) {
	_ = ferryv1.File_ferry_v1_target_inventory_proto // registers ferry.v1
	for _, p := range apiShapeProblems(apiServices(t)) {
		t.Error(p)
	}
}

func apiServices(t *testing.T) []protoreflect.ServiceDescriptor {
	t.Helper()
	var svcs []protoreflect.ServiceDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("ferry.v1", func(f protoreflect.FileDescriptor) bool {
		for i := 0; i < f.Services().Len(); i++ {
			svcs = append(svcs, f.Services().Get(i))
		}
		return true
	})
	if len(svcs) < 8 {
		t.Fatalf("found %d services in package ferry.v1; want the 8 of docs/api.md", len(svcs))
	}
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].FullName() < svcs[j].FullName() })
	return svcs
}

// isResource: a message with `string name = 1` that is not a request or
// response wrapper (AIP-122/123).
func isResource(m protoreflect.MessageDescriptor) bool {
	n := string(m.Name())
	if strings.HasSuffix(n, "Request") || strings.HasSuffix(n, "Response") {
		return false
	}
	f := m.Fields().ByNumber(1)
	return f != nil && f.Name() == "name" && f.Kind() == protoreflect.StringKind && !f.IsList()
}

func apiShapeProblems(svcs []protoreflect.ServiceDescriptor) []string {
	var probs []string
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	// owners: which services answer each resource.
	owners := map[string]map[string]bool{}
	resources := map[string]bool{}
	for _, s := range svcs {
		msgs := s.ParentFile().Messages()
		for i := 0; i < msgs.Len(); i++ {
			if isResource(msgs.Get(i)) {
				resources[string(msgs.Get(i).Name())] = true
			}
		}
		for i := 0; i < s.Methods().Len(); i++ {
			out := s.Methods().Get(i).Output()
			if isResource(out) {
				if owners[string(out.Name())] == nil {
					owners[string(out.Name())] = map[string]bool{}
				}
				owners[string(out.Name())][string(s.Name())] = true
			}
		}
	}
	for _, s := range svcs {
		base := strings.TrimSuffix(string(s.Name()), "Service")
		if resources[base] && !owners[base][string(s.Name())] {
			bad("%s: a service named like resource %s of %v; name it for what it holds", s.FullName(), base, keys(owners[base]))
		}
		for i := 0; i < s.Methods().Len(); i++ {
			m := s.Methods().Get(i)
			full := string(m.FullName())
			name, in, out := string(m.Name()), m.Input(), m.Output()
			if _, ok := authz.Rule("/" + string(s.FullName()) + "/" + name); !ok {
				bad("%s: no authorization rule in coordinator/internal/authz/table.go", full)
			}
			verb, noun := splitVerb(name)
			switch {
			case verb == "Delete" && resources[noun]:
				if why, ok := deleteAnswers[full]; ok {
					if out.Name() != protoreflect.Name(name+"Response") {
						bad("%s answers %s; it %s in a %sResponse", full, out.FullName(), why, name)
					}
				} else if out.FullName() != "google.protobuf.Empty" {
					bad("%s answers %s; a Delete answers google.protobuf.Empty (AIP-135)", full, out.FullName())
				}
			case (verb == "Get" || verb == "Create" || verb == "Update") && resources[noun]:
				if string(out.Name()) != noun || !isResource(out) {
					bad("%s answers %s; a standard %s answers the resource %s itself (AIP-131/133/134)", full, out.FullName(), verb, noun)
				}
				if f := out.Fields().ByName("etag"); verb == "Update" && (f == nil || f.Kind() != protoreflect.StringKind || f.IsList()) {
					bad("%s: resource %s has an Update method but no string etag (AIP-154)", full, out.Name())
				}
			case verb == "List":
				if f := in.Fields().ByName("page_size"); f == nil || f.Kind() != protoreflect.Int32Kind {
					bad("%s: request %s has no int32 page_size (AIP-158)", full, in.Name())
				}
				if f := in.Fields().ByName("page_token"); f == nil || f.Kind() != protoreflect.StringKind {
					bad("%s: request %s has no string page_token (AIP-158)", full, in.Name())
				}
				if f := out.Fields().ByName("next_page_token"); f == nil || f.Kind() != protoreflect.StringKind {
					bad("%s: response %s has no string next_page_token (AIP-158)", full, out.Name())
				}
				if out.Name() != protoreflect.Name(name+"Response") {
					bad("%s answers %s; want %sResponse (AIP-132)", full, out.Name(), name)
				}
			default:
				// Batch and custom methods (AIP-136, AIP-233).
				if out.Name() != protoreflect.Name(name+"Response") {
					bad("%s answers %s; a custom method answers %sResponse (AIP-136)", full, out.Name(), name)
				}
				_, reads := readsOnLeader[full]
				if f := in.Fields().ByName("request_id"); api.IsWriteMethod("/"+string(s.FullName())+"/"+name) && !reads &&
					(f == nil || f.Kind() != protoreflect.StringKind || f.IsList()) {
					bad("%s changes something but %s has no string request_id (AIP-155)", full, in.Name())
				}
			}
			if in.Name() != protoreflect.Name(name+"Request") {
				bad("%s takes %s; want %sRequest", full, in.Name(), name)
			}
		}
	}
	return probs
}

// splitVerb splits "CreatePrimaryStorage" into "Create", "PrimaryStorage".
func splitVerb(method string) (string, string) {
	for i := 1; i < len(method); i++ {
		if method[i] >= 'A' && method[i] <= 'Z' {
			return method[:i], method[i:]
		}
	}
	return method, ""
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
