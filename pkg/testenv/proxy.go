package testenv

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on a loopback port in front of one address, for
// tests that inject network faults between two real processes:
//   - Cut closes every connection through it and refuses new ones until
//     Heal, as a link that went down and came back does to TCP streams;
//   - BlackHole keeps the connections open but moves no byte either way
//     until Heal, as a partition without FIN or RST does.
type Proxy struct {
	// Addr is where clients connect instead of the target (host:port).
	Addr   string
	target string
	ln     net.Listener

	mu      sync.Mutex
	state   proxyState
	changed *sync.Cond
	conns   map[net.Conn]struct{}
	bytes   int64 // forwarded, both directions
	wg      sync.WaitGroup
	closed  bool
}

type proxyState int

const (
	proxyOpen proxyState = iota
	proxyCut
	proxyBlackHole
)

// StartProxy listens on 127.0.0.1:0 and forwards to target. It stops when
// the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.changed = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Host and Port split Addr.
func (p *Proxy) Host() string { h, _, _ := net.SplitHostPort(p.Addr); return h }

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Cut closes every open connection and refuses new ones until Heal.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = proxyCut
	for c := range p.conns {
		c.Close()
	}
	p.changed.Broadcast()
}

// BlackHole stops moving bytes through open and new connections until
// Heal; nothing is closed.
func (p *Proxy) BlackHole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = proxyBlackHole
	p.changed.Broadcast()
}

// Heal lets connections through again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = proxyOpen
	p.changed.Broadcast()
}

// Bytes is how many bytes the proxy forwarded so far, both directions.
func (p *Proxy) Bytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.changed.Broadcast()
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.state == proxyCut || p.closed {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer p.forget(client)
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.forget(server)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pump(server, client) }()
	go func() { defer wg.Done(); p.pump(client, server) }()
	wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == proxyCut || p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) forget(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// pump copies src to dst; while the proxy is a black hole it holds what it
// read. An orderly end of src half-closes dst; any failure closes both.
func (p *Proxy) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass(int64(n)) {
				break
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if errors.Is(err, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok && tc.CloseWrite() == nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

// pass waits while the proxy is a black hole and reports whether the
// bytes may go on (false once cut or closed).
func (p *Proxy) pass(n int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.state == proxyBlackHole && !p.closed {
		p.changed.Wait()
	}
	if p.state == proxyCut || p.closed {
		return false
	}
	p.bytes += n
	return true
}
