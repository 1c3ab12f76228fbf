package target

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Limiter is the migration server's upstream token bucket, shared by all
// its jobs: WaitN blocks until n bytes may pass.
type Limiter interface {
	WaitN(ctx context.Context, n int) error
}

// QemuImgCopier copies with `qemu-img convert -n`, which reads the
// source's block status and writes only data (holes become write-zeroes,
// or nothing when the destination is zeroed). With a Limiter, the writes
// travel through a proxy socket that takes tokens for every byte sent to
// the destination.
type QemuImgCopier struct {
	// QemuImg defaults to "qemu-img" on PATH.
	QemuImg string
	// Limiter may be nil: no limit.
	Limiter Limiter
}

// Copy implements Copier. opts.Progress gets the share qemu-img reports of
// opts.Size.
func (c *QemuImgCopier) Copy(ctx context.Context, src, dst Endpoint, opts CopyOptions) error {
	if c.Limiter != nil {
		p, err := startLimitProxy(filepath.Join(filepath.Dir(dst.Socket), "limited.sock"), dst, c.Limiter)
		if err != nil {
			return err
		}
		defer p.close()
		dst = p.endpoint
	}
	qemuImg := c.QemuImg
	if qemuImg == "" {
		qemuImg = "qemu-img"
	}
	cmd := exec.CommandContext(ctx, qemuImg, convertArgs(src, dst, opts.DstZeroed)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu-img: %w", err)
	}
	readProgress(stdout, opts.Size, opts.Progress)
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("qemu-img convert: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if opts.Progress != nil {
		opts.Progress(opts.Size, opts.Size)
	}
	return nil
}

// convertArgs is the qemu-img command line (without the program) copying
// one NBD export onto another.
func convertArgs(src, dst Endpoint, dstZeroed bool) []string {
	args := []string{"convert", "-n", "-p", "-W", "-f", FormatRaw, "-O", FormatRaw}
	if dstZeroed {
		args = append(args, "--target-is-zero")
	}
	return append(args, src.URI(), dst.URI())
}

var progressRE = regexp.MustCompile(`\((\d+(?:\.\d+)?)/100%\)`)

// readProgress parses qemu-img -p output ("    (12.34/100%)\r") until EOF.
func readProgress(r io.Reader, size int64, progress func(done, total int64)) {
	sc := bufio.NewScanner(r)
	sc.Split(splitCR)
	for sc.Scan() {
		m := progressRE.FindSubmatch(sc.Bytes())
		if m == nil || progress == nil {
			continue
		}
		if pct, err := strconv.ParseFloat(string(m[1]), 64); err == nil {
			progress(int64(pct/100*float64(size)), size)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// splitCR splits on \r or \n.
func splitCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// limitProxy forwards NBD connections to a destination socket, taking
// tokens from a Limiter for every byte on the way to the destination.
type limitProxy struct {
	endpoint Endpoint
	ln       net.Listener
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func startLimitProxy(socket string, upstream Endpoint, lim Limiter) (*limitProxy, error) {
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("limit proxy: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &limitProxy{endpoint: Endpoint{Socket: socket, Export: upstream.Export}, ln: ln, ctx: ctx, cancel: cancel}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.forward(conn, upstream.Socket, lim)
			}()
		}
	}()
	return p, nil
}

// forward relays one connection until either side closes it.
func (p *limitProxy) forward(down net.Conn, upstream string, lim Limiter) {
	defer down.Close()
	up, err := net.Dial("unix", upstream)
	if err != nil {
		return
	}
	defer up.Close()
	stop := context.AfterFunc(p.ctx, func() { down.Close(); up.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(down, up)
		_ = down.(*net.UnixConn).CloseWrite()
	}()
	_ = limitedCopy(p.ctx, up, down, lim)
	_ = up.(*net.UnixConn).CloseWrite()
	<-done
}

// limitedCopy copies src to dst in chunks small enough for any bucket's
// burst, waiting for tokens before each write.
func limitedCopy(ctx context.Context, dst io.Writer, src io.Reader, lim Limiter) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if werr := lim.WaitN(ctx, n); werr != nil {
				return werr
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// close stops accepting, cuts open connections and waits for them.
func (p *limitProxy) close() {
	p.cancel()
	_ = p.ln.Close()
	p.wg.Wait()
}
