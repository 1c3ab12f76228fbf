// Package plan reads the plan files of "ferryctl job create -f": a batch
// of migration jobs, the protojson form of a CreateMigrationJobsRequest,
// written in JSON or YAML.
package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// MaxSize bounds a plan file: well above 50 jobs of any real size, well
// below what a gRPC request may carry.
const MaxSize = 1 << 20

// Parse reads a plan: a CreateMigrationJobsRequest in YAML or JSON (JSON
// is YAML too) with proto field names. YAML becomes JSON, which protojson
// reads, so the plan's schema is exactly the API's and unknown fields are
// refused. The request is not validated beyond its form: the API does
// that, naming the field.
func Parse(data []byte) (*ferryv1.CreateMigrationJobsRequest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%d bytes; a plan is at most %d", len(data), MaxSize)
	}
	// JSON is YAML too, but the YAML reader refuses control characters
	// that JSON strings may hold (U+0080-U+009F): a JSON plan, such as one
	// protojson wrote, is read as JSON.
	js := bytes.TrimSpace(data)
	if len(js) == 0 || js[0] != '{' || !json.Valid(js) {
		var err error
		if js, err = yamlToJSON(data); err != nil {
			return nil, err
		}
	}
	req := &ferryv1.CreateMigrationJobsRequest{}
	if err := protojson.Unmarshal(js, req); err != nil {
		return nil, fmt.Errorf("not a CreateMigrationJobsRequest: %w", err)
	}
	if len(req.GetJobs()) == 0 {
		return nil, errors.New("no jobs: list the VMs under jobs")
	}
	return req, nil
}

// yamlToJSON converts one YAML document to JSON.
func yamlToJSON(data []byte) ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("read YAML: %w", err)
	}
	if doc == nil {
		return nil, errors.New("empty")
	}
	if _, ok := doc.(map[string]any); !ok {
		return nil, fmt.Errorf("want a mapping with source, migration_server and jobs, got %T", doc)
	}
	norm, err := jsonable(doc, "")
	if err != nil {
		return nil, err
	}
	return json.Marshal(norm)
}

// jsonable makes what YAML decoded fit JSON: mappings with non-string
// keys are refused (JSON objects have string keys only).
func jsonable(v any, path string) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			n, err := jsonable(e, path+"."+k)
			if err != nil {
				return nil, err
			}
			t[k] = n
		}
		return t, nil
	case map[any]any:
		return nil, fmt.Errorf("%s: mapping keys must be field names", strings.TrimPrefix(path, "."))
	case []any:
		for i, e := range t {
			n, err := jsonable(e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			t[i] = n
		}
		return t, nil
	default:
		return v, nil
	}
}

// FromJobs is the plan that creates jobs like these again, on this Ferry
// or another: per job its source VM, target (with the NICs' addresses and
// MACs it was given), options and labels; nothing the job's runs added.
// A plan has one source and one migration server, so jobs of several are
// refused, naming the pairs.
func FromJobs(jobs []*ferryv1.MigrationJob) (*ferryv1.CreateMigrationJobsRequest, error) {
	if len(jobs) == 0 {
		return nil, errors.New("no jobs to export")
	}
	req := &ferryv1.CreateMigrationJobsRequest{Source: jobs[0].GetSource(), MigrationServer: jobs[0].GetMigrationServer()}
	pairs := map[string]bool{}
	for _, j := range jobs {
		pairs[j.GetSource()+" → "+j.GetMigrationServer()] = true
		req.Jobs = append(req.Jobs, &ferryv1.MigrationJobSpec{
			SourceVm: j.GetSourceVm(), Target: cloneOf(j.GetTarget()), Options: cloneOf(j.GetOptions()),
			DisplayName: j.GetDisplayName(), Description: j.GetDescription(),
		})
	}
	if len(pairs) > 1 {
		list := make([]string, 0, len(pairs))
		for p := range pairs {
			list = append(list, p)
		}
		slices.Sort(list)
		return nil, fmt.Errorf("the jobs come from %d sources or migration servers (%s); a plan has one of each: select them with --source and --migration-server",
			len(pairs), strings.Join(list, ", "))
	}
	return req, nil
}

// Marshal writes a plan as Parse reads it: YAML, or JSON when asked, with
// the API's field names.
func Marshal(req *ferryv1.CreateMigrationJobsRequest, asJSON bool) ([]byte, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true, Indent: "  "}.Marshal(req)
	if err != nil {
		return nil, err
	}
	if asJSON {
		return append(js, '\n'), nil
	}
	var doc any
	if err := json.Unmarshal(js, &doc); err != nil {
		return nil, err
	}
	return yaml.Marshal(doc)
}

func cloneOf[T proto.Message](m T) T {
	var zero T
	if !m.ProtoReflect().IsValid() {
		return zero
	}
	return proto.Clone(m).(T)
}
