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
// on the machine: an exclusive lock on a file in the temporary directory)
// holds it. Two tests on one subnet lose each other's packets (the replies
// routed out of the other's veth), which a random pick did in 1 of a few
// runs. It waits while all sixteen are taken.
func Subnet172(t testing.TB) int {
	t.Helper()
	ip := LookPath(t, "ip")
	deadline := time.Now().Add(5 * time.Minute)
	for {
		addrs, _ := run(context.Background(), nil, ip, "-4", "addr", "show")
		routes, _ := run(context.Background(), nil, ip, "-4", "route", "show", "table", "all")
		used := " " + strings.ReplaceAll(addrs+"\n"+routes, "\n", "\n ")
		for n := 16; n <= 31; n++ {
			if strings.Contains(used, fmt.Sprintf(" 172.%d.", n)) {
				continue
			}
			f, err := os.OpenFile(filepath.Join(os.TempDir(), fmt.Sprintf("ferry-test-subnet-172.%d.lock", n)), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				t.Fatalf("subnet lock: %v", err)
			}
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				f.Close()
				continue
			}
			t.Cleanup(func() { f.Close() }) // releases the lock, after the veths went (cleanups run last first)
			return n
		}
		if time.Now().After(deadline) {
			t.Fatal("no free 172.N.0.0/16 subnet (N from 16 to 31) for the test's veths within 5 minutes")
		}
		time.Sleep(500 * time.Millisecond)
	}
}
