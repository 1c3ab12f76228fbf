package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// parsePlan reads a plan: a CreateMigrationJobsRequest in YAML or JSON (JSON
// is YAML too) with proto field names. YAML becomes JSON, which protojson
// reads, so the plan's schema is exactly the API's and unknown fields are
// refused.
func parsePlan(data []byte) (*ferryv1.CreateMigrationJobsRequest, error) {
	js, err := yamlToJSON(data)
	if err != nil {
		return nil, err
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

// parseNIC reads SOURCE_MAC=NETWORK[,mac=MAC][,ip=IP].
func parseNIC(s string) (*ferryv1.TargetNic, error) {
	head, rest, _ := strings.Cut(s, ",")
	srcMAC, network, ok := strings.Cut(head, "=")
	if !ok || strings.TrimSpace(network) == "" {
		return nil, fmt.Errorf("%q: want SOURCE_MAC=NETWORK[,mac=MAC][,ip=IP]", s)
	}
	nic := &ferryv1.TargetNic{SourceMac: strings.TrimSpace(srcMAC), L3Network: resName("l3Networks", strings.TrimSpace(network))}
	if rest != "" {
		kv, err := keyValues(rest, "", "mac", "ip")
		if err != nil {
			return nil, err
		}
		nic.Mac, nic.Ip = kv["mac"], kv["ip"]
	}
	return nic, nil
}

// parseDisk reads SOURCE_DISK=SIZE[,name=NAME].
func parseDisk(s string) (*ferryv1.TargetDisk, error) {
	head, rest, _ := strings.Cut(s, ",")
	src, size, ok := strings.Cut(head, "=")
	if !ok || strings.TrimSpace(src) == "" {
		return nil, fmt.Errorf("%q: want SOURCE_DISK=SIZE[,name=NAME], such as vda=20GiB,name=root", s)
	}
	n, err := parseBytes(size)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	disk := &ferryv1.TargetDisk{SourceDisk: strings.TrimSpace(src), SizeBytes: n}
	if rest != "" {
		kv, err := keyValues(rest, "", "name")
		if err != nil {
			return nil, err
		}
		disk.DisplayName = kv["name"]
	}
	return disk, nil
}
