package agenttest

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestBinariesDoNotImportAgenttest keeps test instruments out of the
// shipped agent.
func TestBinariesDoNotImportAgenttest(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, "list", "-deps", "github.com/ferry-v2v/ferry/agent/cmd/ferry-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasSuffix(dep, "/agenttest") || strings.Contains(dep, "testing") {
			t.Errorf("ferry-agent depends on %s", dep)
		}
	}
}
