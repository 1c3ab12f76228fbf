package main

import (
	"fmt"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

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
