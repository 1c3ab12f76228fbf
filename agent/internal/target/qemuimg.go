package target

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// Onto a qcow2 file and without an upstream limit, a round is done by
// qemu-img convert, range by range: measured here it takes half the CPU
// of the agent's own copier (cache qemu-nbd → agent → volume qemu-nbd),
// which on a busy host is what a job waits for. Under a limit the agent's
// copier keeps the migration server's shared bucket (qemu-img's -r would
// be one job's own rate); block devices and RBD images keep it too.

// A volume written straight into its file (direct.go) is not: the agent's
// copier then reads the cache alone, and measured on a whole job of 1 GiB
// it took less CPU than the qemu-img rounds (which also close and reopen
// the volume).

// byQemuImg reports whether the next round may be done by qemu-img.
func (f *follower) byQemuImg() bool {
	if !useQemuImg || f.directOK || f.remote != nil || f.vol.Dir == "" || f.vol.Format != FormatQcow2 || !f.zeroed {
		return false
	}
	l := f.job.Upstream
	return l == nil || l.Rate() == 0
}

// besideNice is the niceness of a qemu-img round while the copy runs:
// on a host short of CPU the copy, which the job waits for, goes first,
// and what the upload has not taken by the copy's end it reads from the
// image file instead of through the copy's qemu-nbd, which costs less.
// Measured on a whole job of 1 GiB at load 8-9, three pairs: 4.96-5.78 s
// and 6.3-6.5 CPU-seconds against 5.57-5.94 s and 6.9-7.0.
var besideNice = 10

// useQemuImg can be turned off by tests and benchmarks.
var useQemuImg = true

// roundQemuImg uploads the chunks todo with one qemu-img convert per run
// of them onto the volume, which qemu-img opens itself (the volume's own
// qemu-nbd is stopped first). While the copy runs, qemu-img reads the
// cache image from the copy's qemu-nbd on socket; once it has ended, from
// the image file (c, a connection to the image's server, counts the data).
func (f *follower) roundQemuImg(ctx context.Context, socket string, c *nbd.Client, m pipeline.Marks, todo []int) error {
	if err := f.closeTarget(); err != nil {
		return err
	}
	if !f.writing {
		if err := f.up.fence(ctx, "upload onto volume "+f.vol.Path); err != nil {
			return err
		}
		f.writing = true
	}
	s := todoSource{c: c, size: m.Size, chunk: m.ChunkSize, todo: make([]bool, m.Chunks())}
	for _, i := range todo {
		s.todo[i] = true
	}
	var data int64
	for _, r := range runs(todo) {
		off := int64(r[0]) * m.ChunkSize
		size := min(m.Size, int64(r[1])*m.ChunkSize) - off
		n, err := countData(ctx, s, off, off+size)
		if err != nil {
			return err
		}
		if data += n; n == 0 {
			continue // zeroes only: the volume reads so already
		}
		src := fmt.Sprintf("driver=raw,offset=%d,size=%d,file.driver=nbd,file.server.type=unix,file.server.path=%s", off, size, optEscape(socket))
		if f.export != nil {
			path, format := f.export.Image()
			src = fmt.Sprintf("driver=raw,offset=%d,size=%d,file.driver=%s,file.file.driver=file,file.file.filename=%s", off, size, format, optEscape(path))
			if format == FormatRaw {
				src = fmt.Sprintf("driver=raw,offset=%d,size=%d,file.driver=file,file.filename=%s", off, size, optEscape(path))
			}
		}
		dst := fmt.Sprintf("driver=raw,offset=%d,size=%d,file.driver=qcow2,file.file.driver=file,file.file.filename=%s", off, size, optEscape(f.vol.Path))
		if err := convertRange(ctx, src, dst, f.export == nil); err != nil {
			return fmt.Errorf("%w: qemu-img convert of %d bytes at %d: %w", errCacheRead, size, off, err)
		}
	}
	f.rounds++
	f.uploaded += data
	f.job.Progress.Uploaded(f.disk, f.uploaded)
	f.log.DebugContext(ctx, "upload round by qemu-img", "chunks", len(todo), "bytes", data)
	return nil
}

// convertRange runs qemu-img convert of src onto dst (option strings),
// which flushes dst before it exits; beside the copy, at besideNice. It dies with the agent: a qemu-img
// left writing would hold the volume's lock against the agent that
// resumes the job.
func convertRange(ctx context.Context, src, dst string, beside bool) error {
	argv := []string{"qemu-img", "convert", "-n", "--target-is-zero", "-W", "-m", "8", "-t", "writeback",
		"--image-opts", src, "--target-image-opts", dst}
	if beside && besideNice > 0 {
		argv = append([]string{"nice", "-n", strconv.Itoa(besideNice)}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = cache.QemuEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// runs cuts ascending chunk indexes into runs [first, end).
func runs(chunks []int) [][2]int {
	var out [][2]int
	for _, i := range chunks {
		if n := len(out); n > 0 && out[n-1][1] == i {
			out[n-1][1] = i + 1
			continue
		}
		out = append(out, [2]int{i, i + 1})
	}
	return out
}

// countData counts the data the source holds in [off, end) of its chunks
// to upload.
func countData(ctx context.Context, s todoSource, off, end int64) (int64, error) {
	var n int64
	for off < end {
		exts, err := s.Extents(ctx, off, end-off)
		if err != nil {
			return 0, err
		}
		for _, e := range exts {
			if !e.Zero {
				n += e.Length
			}
			off = e.Offset + e.Length
		}
	}
	return n, nil
}

// optEscape escapes a value for a qemu option string.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
