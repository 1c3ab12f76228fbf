//go:build linux

package nbd

import (
	"bufio"
	"io"
	"net"
	"runtime"
	"syscall"
	"unsafe"
)

// rawIO reads and writes a socket of the transmission phase with raw
// system calls on its non-blocking descriptor, waiting in Go's poller only
// when the socket has nothing to read or no room to write. Through the
// net package every read and write enters the scheduler's system call
// state, and one that copies much (a 2 MiB write, a 200 KiB read) lasts
// long enough for the scheduler's monitor to hand the goroutine's P to
// another thread, which the caller must then win back: measured on a
// copy, a third of the copier's CPU went to those thread switches
// (futex waits, the monitor's wake-ups). The calls never block, so
// holding the P while the kernel copies is what a copy loop wants.
type rawIO struct {
	rc syscall.RawConn
}

// newRawIO returns the raw I/O of conn, a unix or TCP socket; nil for any
// other connection (TLS, an SSH channel), which keeps the net package's.
func newRawIO(conn net.Conn) *rawIO {
	switch conn.(type) {
	case *net.UnixConn, *net.TCPConn:
	default:
		return nil
	}
	rc, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil
	}
	return &rawIO{rc: rc}
}

// Read reads into p once data is there; io.EOF at the stream's end.
func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			m, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			n, errno = int(m), e
			return true
		}
	})
	runtime.KeepAlive(p)
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, errno
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// maxIovecs is how many buffers one writev takes (IOV_MAX).
const maxIovecs = 1024

// writev writes every byte of bufs, with one writev where the socket has
// room for them all.
func (r *rawIO) writev(bufs [][]byte) error {
	iov := make([]syscall.Iovec, 0, len(bufs))
	for _, b := range bufs {
		if len(b) > 0 {
			v := syscall.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			iov = append(iov, v)
		}
	}
	defer runtime.KeepAlive(bufs)
	for len(iov) > 0 {
		var errno syscall.Errno
		err := r.rc.Write(func(fd uintptr) bool {
			for {
				m, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(min(len(iov), maxIovecs)))
				switch e {
				case syscall.EINTR:
					continue
				case syscall.EAGAIN:
					return false
				case 0:
					iov = advance(iov, int(m))
				default:
					errno = e
				}
				return true
			}
		})
		if err != nil {
			return err
		}
		if errno != 0 {
			return errno
		}
	}
	return nil
}

// advance drops the first n bytes of iov.
func advance(iov []syscall.Iovec, n int) []syscall.Iovec {
	for n > 0 && len(iov) > 0 {
		l := int(iov[0].Len)
		if n < l {
			iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(iov[0].Base), n))
			iov[0].SetLen(l - n)
			return iov
		}
		n -= l
		iov = iov[1:]
	}
	return iov
}

// useRawIO switches c to raw I/O when its connection allows it and the
// handshake left nothing buffered.
func (c *Client) useRawIO() {
	r := newRawIO(c.conn)
	if r == nil || c.br.Buffered() > 0 {
		return
	}
	c.raw = r
	c.br = bufio.NewReaderSize(r, readBuffer)
}
