package consensus

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLoggerRoutesIntoSlog(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))

	l.Named("raft").Named("snapshot").With("peer", "n2").Warn("slow", "servers", hclog.Fmt("%d of %d", 2, 3))
	l.Debug("hidden")
	got := buf.String()
	for _, want := range []string{"level=WARN", "msg=slow", "logger=raft.snapshot", "peer=n2", `servers="2 of 3"`} {
		if !strings.Contains(got, want) {
			t.Errorf("log line %q lacks %s", got, want)
		}
	}
	if strings.Contains(got, "hidden") {
		t.Errorf("debug line passed an info-level handler: %q", got)
	}
	if l.IsDebug() || !l.IsInfo() || l.GetLevel() != hclog.Info {
		t.Errorf("levels: IsDebug=%v IsInfo=%v GetLevel=%v, want info", l.IsDebug(), l.IsInfo(), l.GetLevel())
	}
	if strings.Count(got, "logger=") != 1 {
		t.Errorf("nested names repeat the logger attribute: %q", got)
	}
}
