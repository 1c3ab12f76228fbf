//go:build linux

package nbd

import (
	"bytes"
	"net"
	"syscall"
	"testing"
	"unsafe"
)

// TestRawIOOnSockets: a client on a unix socket reads and writes with raw
// system calls, one on any other stream (here a pipe, standing for TLS
// or an SSH channel) through the connection's own methods; both move the
// same bytes.
func TestRawIOOnSockets(t *testing.T) {
	srv := qemuNBD(t, newImage(t, "raw", 8*MiB), "-f", "raw")
	c := dial(t, srv.sock, Options{})
	if c.raw == nil {
		t.Fatal("a client on a unix socket does not use raw I/O")
	}
	ctx := testCtx(t)
	want := pattern(512*KiB, 3*MiB+4096)
	if err := c.WriteAt(ctx, want, 512*KiB, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := c.ReadAt(ctx, got, 512*KiB); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back through raw I/O differs from what was written")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if newRawIO(a) != nil {
		t.Error("raw I/O on a net.Pipe")
	}
}

// TestAdvance: advance drops n bytes across and within buffers.
func TestAdvance(t *testing.T) {
	bufs := [][]byte{[]byte("abc"), []byte("defgh"), []byte("ij")}
	iovs := func() []syscall.Iovec {
		var iov []syscall.Iovec
		for _, b := range bufs {
			v := syscall.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			iov = append(iov, v)
		}
		return iov
	}
	str := func(iov []syscall.Iovec) string {
		var s []byte
		for _, v := range iov {
			s = append(s, unsafe.Slice(v.Base, v.Len)...)
		}
		return string(s)
	}
	for n, want := range []string{"abcdefghij", "bcdefghij", "cdefghij", "defghij", "efghij", "fghij", "ghij", "hij", "ij", "j", ""} {
		iov := advance(iovs(), n)
		if got := str(iov); got != want {
			t.Errorf("advance by %d leaves %q, want %q", n, got, want)
		}
		if n == 3 && len(iov) != 2 {
			t.Errorf("advance by 3 leaves %d buffers, want 2", len(iov))
		}
	}
}
