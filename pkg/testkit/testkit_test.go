package testkit

import (
	"testing"
	"time"
)

// fatalT records a Fatalf instead of stopping the test.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Helper() {}

func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = format
	panic(f)
}

func TestWaitFor(t *testing.T) {
	n := 0
	WaitFor(t, time.Second, "three looks", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("cond called %d times", n)
	}
	f := &fatalT{TB: t}
	func() {
		defer func() { _ = recover() }()
		WaitFor(f, 30*time.Millisecond, "never", func() bool { return false })
	}()
	if f.msg == "" {
		t.Fatal("WaitFor did not fail after its timeout")
	}
}

func TestLoggerAfterTheTest(t *testing.T) {
	var log = func() func() {
		var l func()
		t.Run("inner", func(t *testing.T) {
			lg := Logger(t)
			lg.Info("during the test")
			l = func() { lg.Info("after the test") }
		})
		return l
	}()
	log() // must neither panic nor fail
}
