package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Subnet172 returns an N from 16 to 31 whose 172.N.0.0/16 the test may
// use alone for its veths until it ends: no address or route of the
// root namespace is in it, and no other test (of this process or another
// on the machine) holds it. Two tests on one subnet lose each other's
// packets (the replies routed out of the other's veth), which a random
// pick did in 1 of a few runs. It waits while all sixteen are taken.
func Subnet172(t testing.TB) int {
	t.Helper()
	ip := LookPath(t, "ip")
	return claim(t, "subnet-172", 16, 31, func() func(n int) bool {
		addrs, _ := run(context.Background(), nil, ip, "-4", "addr", "show")
		routes, _ := run(context.Background(), nil, ip, "-4", "route", "show", "table", "all")
		used := " " + strings.ReplaceAll(addrs+"\n"+routes, "\n", "\n ")
		return func(n int) bool { return !strings.Contains(used, fmt.Sprintf(" 172.%d.", n)) }
	})
}

// claim returns a number from lo to hi that the machine does not use
// (sweep, called once per look over the range, returns what it says of
// each number; nil: none is used) and that no other test holds (an
// exclusive lock on a file of the temporary directory named after kind
// and n, across processes), held until the test ends. It waits up to 5
// minutes while all are taken.
func claim(t testing.TB, kind string, lo, hi int, sweep func() func(n int) bool) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		free := func(int) bool { return true }
		if sweep != nil {
			free = sweep()
		}
		for n := lo; n <= hi; n++ {
			if !free(n) {
				continue
			}
			f, err := os.OpenFile(filepath.Join(os.TempDir(), fmt.Sprintf("ferry-test-%s-%d.lock", kind, n)), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				t.Fatalf("%s lock: %v", kind, err)
			}
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				f.Close()
				continue
			}
			t.Cleanup(func() { f.Close() }) // releases the lock, after what the test made with it (cleanups run last first)
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no free %s from %d to %d within 5 minutes", kind, lo, hi)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
