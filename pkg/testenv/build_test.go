package testenv

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestBuildTagsAreTheMakefiles checks that the tags tests build the
// binaries with are the Makefile's BUILD_TAGS.
func TestBuildTagsAreTheMakefiles(t *testing.T) {
	raw, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^BUILD_TAGS \?= (.*)$`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("the Makefile sets no BUILD_TAGS ?= …")
	}
	if got := strings.TrimSpace(string(m[1])); got != BuildTags {
		t.Errorf("Makefile BUILD_TAGS = %q; testenv.BuildTags = %q", got, BuildTags)
	}
}

// TestAgentLinksNoTemplates checks that ferry-agent built with BuildTags
// links neither text/template nor html/template: their reflect Method
// calls would make the linker keep every exported method of every
// reachable type (see BuildTags), which an idle agent pays for in RSS.
// (ferry-coordinator still links html/template, through net/rpc of
// hashicorp/go-msgpack.)
func TestAgentLinksNoTemplates(t *testing.T) {
	for _, cmd := range []string{"agent/cmd/ferry-agent"} {
		out, err := exec.Command("go", "list", "-tags", BuildTags, "-deps", "-f",
			`{{.ImportPath}}`, "github.com/ferry-v2v/ferry/"+cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", cmd, err, out)
		}
		for _, pkg := range strings.Fields(string(out)) {
			if pkg == "text/template" || pkg == "html/template" {
				t.Errorf("%s links %s (go list -deps -tags %s)", cmd, pkg, BuildTags)
			}
		}
	}
}
