package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestNetworkShowsReservations: 'network get' lists the addresses
// migrated VMs kept; release-address wants two arguments.
func TestNetworkShowsReservations(t *testing.T) {
	n := &ferryv1.L3Network{Name: "l3Networks/lan", Reservations: []*ferryv1.AddressReservation{
		{Ip: "10.0.0.105", Mac: "52:54:00:12:34:56", VmName: "web-1", Job: "migrationJobs/a", CreateTime: timestamppb.Now()},
		{Ip: "10.0.0.106", Mac: "52:54:00:12:34:57", VmName: "web-2", Job: "migrationJobs/b"}}}
	var b bytes.Buffer
	if err := printDetails(&b, networkDetails(n)); err != nil {
		t.Fatal(err)
	}
	want := "Reserved:      10.0.0.105 52:54:00:12:34:56 web-1 (migrationJobs/a); 10.0.0.106 52:54:00:12:34:57 web-2 (migrationJobs/b)\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("network details lack %q:\n%s", want, b.String())
	}
	var out, errOut strings.Builder
	code := Execute(context.Background(), []string{"network", "release-address", "lan"}, IO{Out: &out, Err: &errOut})
	if code != exitUsage || !strings.Contains(errOut.String(), "want two arguments, the network's name and the address; got 1") {
		t.Errorf("release-address with one argument: exit %d, stderr %q", code, errOut.String())
	}
}
