package nbd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// sessionSeeds are the real servers whose transcripts seed FuzzSession.
var sessionSeeds = []struct {
	file      string
	simple    bool
	statusErr bool // the block status request fails (no context selected)
	serve     func(t *testing.T) string
}{
	{file: "session-qemu-nbd.bin", serve: qemuSeedServer},
	{file: "session-qemu-nbd-simple.bin", simple: true, statusErr: true, serve: qemuSeedServer},
	{file: "session-nbdkit-memory.bin", serve: func(t *testing.T) string {
		return nbdkit(t, "memory", "1M").sock
	}},
}

func qemuSeedServer(t *testing.T) string {
	img := newImage(t, "qcow2", MiB)
	qemuIO(t, "qcow2", img, "write -P 0x11 0 4k")
	return qemuNBD(t, img, "-f", "qcow2").sock
}

// TestSessionSeeds replays the recorded transcripts of real servers and
// checks the client makes of them what it made live. With -update it
// records them again.
func TestSessionSeeds(t *testing.T) {
	for _, s := range sessionSeeds {
		t.Run(s.file, func(t *testing.T) {
			path := filepath.Join("testdata", s.file)
			if *update {
				recordSession(t, s.serve(t), s.simple, path)
			}
			stream, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (record with go test -run TestSessionSeeds -update)", err)
			}
			reqs, err := replaySession(s.simple, stream)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range reqs {
				var e *Error
				switch {
				case r.cmd == cmdBlockStatus && s.statusErr:
					if !errors.As(r.err, &e) || e.Errno != EINVAL {
						t.Errorf("block status without a context: %v, want EINVAL", r.err)
					}
				case r.err != nil:
					t.Errorf("%s: %v", cmdName(r.cmd), r.err)
				}
			}
			want := make([]byte, 8*KiB)
			if s.file != "session-nbdkit-memory.bin" {
				copy(want, bytes.Repeat([]byte{0x11}, 4*KiB)) // what qemuSeedServer wrote
			}
			if got := reqs[0].rbuf; !bytes.Equal(got, want) {
				t.Errorf("replayed read returned % x … % x", got[:4], got[4*KiB:4*KiB+4])
			}
		})
	}
}

// recordSession runs sessionRequests against sock one at a time and saves
// everything the server sent.
func recordSession(t *testing.T, sock string, simple bool, path string) {
	raw, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conn := &recordConn{Conn: raw}
	opts := Options{DisableStructuredReplies: simple, Logger: testkit.Logger(t)}
	br := bufio.NewReaderSize(conn, 64<<10)
	neg, err := (&handshaker{r: br, w: conn, opts: &opts}).handshake()
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(conn, br, neg, opts)
	go c.readLoop()
	for _, r := range sessionRequests() {
		_ = c.do(context.Background(), r)
	}
	c.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, conn.bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// recordConn keeps a copy of everything read from the connection.
type recordConn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (c *recordConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf = append(c.buf, p[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *recordConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf
}
