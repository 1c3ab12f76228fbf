package vmware

import (
	"context"
	"encoding/pem"
	"strconv"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/seal"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// simConfig is a Config that reaches sim, its certificate pinned.
func simConfig(t testing.TB, sim *vcsimtest.Sim) Config {
	port, err := strconv.Atoi(sim.Port())
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Address: sim.Address(), Port: port, User: sim.User(), Password: seal.Secret(sim.Password()),
		Thumbprint: sim.Thumbprint(), Logger: testkit.Logger(t), ShutdownTimeout: 5 * time.Second,
	}
}

// simSource is the Source, and its secrets, that reach sim.
func simSource(t testing.TB, sim *vcsimtest.Sim) (*ferryv1.Source, map[string]string) {
	port, err := strconv.Atoi(sim.Port())
	if err != nil {
		t.Fatal(err)
	}
	src := &ferryv1.Source{Name: "sources/vcsim", Type: ferryv1.Platform_PLATFORM_VMWARE,
		Vcenter: &ferryv1.VCenterConnection{Address: sim.Address(), Port: int32(port), User: sim.User(),
			Credential: "credentials/vcsim", Thumbprint: sim.Thumbprint()}}
	return src, map[string]string{"credentials/vcsim": sim.Password()}
}

// simCAPEM is the simulator's certificate as a PEM CA bundle.
func simCAPEM(sim *vcsimtest.Sim) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: sim.Server.Certificate().Raw}))
}

func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func simulatorRef(id string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VirtualMachine", Value: id}
}
