package testcluster

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// Eventually is testkit.WaitFor, for the cluster tests that say it so.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, timeout, what, cond)
}

// Logger sends logs at warn and above through t (debug with FERRY_TEST_DEBUG
// is left to the caller's own handler).
func Logger(t testing.TB) *slog.Logger { return testkit.LoggerAt(t, slog.LevelWarn) }

// Ctx is a context bounded by d that ends with the test.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
