package kvm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"libvirt.org/go/libvirt"
)

// ErrVMStarted fails a cold copy whose source VM was started (or its
// images written) while its disks were read.
var ErrVMStarted = errors.New("source VM was started during the cold copy")

// coldReadyTimeout bounds how long a qemu-nbd takes to create its socket.
const coldReadyTimeout = 30 * time.Second

// ColdExport serves the disks of a shut-off VM read-only over NBD on the
// source host, without a backup job: one qemu-nbd per disk (export name =
// disk target) on SocketDir/ferry-backup-<uuid>-<id>-<target>.sock, which
// follows a qcow2 image's backing chain itself.
//
// Each qemu-nbd runs under a shell that is the command of its own SSH
// session and stops it (and removes its socket) as soon as the session's
// input ends: when Close ends the session, and equally when the agent
// crashes or the SSH connection drops, so no qemu-nbd outlives the
// connection that started it. The socket names carry BackupPrefix, so
// CleanupStale and the leftovers janitor remove a socket that survived.
//
// qemu-nbd opens the images with force-share=on: it takes no image lock,
// so an operator can still start the VM. Ferry does not hold the VM off;
// it notices instead: Check fails with ErrVMStarted once the VM is no
// longer shut off or the top image files' size or modification time
// changed since the export began.
type ColdExport struct {
	log     *slog.Logger
	vm      string
	uuid    string
	disks   []Disk // the exported disks, in order
	sockets []string
	bitmaps map[string]string // target → the dirty bitmap its qemu-nbd offers (StartBitmapExport)
	stamps  string            // size and mtime of the top image files at the start

	mu      sync.Mutex
	conn    *Conn
	servers []*coldServer
	sudo    bool // the servers run through sudo
	closed  bool
}

// coldServer is the SSH session whose command runs one qemu-nbd; closing
// its input stops the server. A server run through sudo (pid > 0, the
// pid of sudo) stops when its session, which has a pseudo-terminal, is
// closed.
type coldServer struct {
	session *ssh.Session
	stdin   io.WriteCloser
	conn    *Conn
	pid     int
}

// stop ends the server's input, waits (until ctx ends) for the shell to
// stop qemu-nbd and remove the socket, and closes the session. A sudo'd
// server's session is closed and its sudo waited for.
func (s *coldServer) stop(ctx context.Context) {
	if s.pid > 0 {
		s.session.Close()
		if err := waitGone(ctx, s.conn, s.pid); err != nil {
			s.conn.log.Warn("a qemu-nbd run through sudo did not stop with its session", "pid", s.pid, "err", err)
		}
		return
	}
	done := make(chan struct{})
	go func() { _ = s.session.Wait(); close(done) }()
	s.stdin.Close()
	select {
	case <-done:
	case <-ctx.Done():
	}
	s.session.Close()
}

// StartColdExport checks that vm is shut off and starts a read-only NBD
// server for each of the named disks (all when disks is empty). Only
// file and block disks of format raw or qcow2 can be exported.
// beforeBegin, when set, is called before anything is started on the
// source; its error stops StartColdExport.
func (c *Conn) StartColdExport(ctx context.Context, vm *VM, disks []string, beforeBegin func(*ColdExport) error) (*ColdExport, error) {
	e, err := c.newColdExport(vm, disks)
	if err != nil {
		return nil, err
	}
	return e.start(ctx, c, beforeBegin)
}

// StartBitmapExport is StartColdExport of the disks named by the keys of
// bitmaps, each qemu-nbd also offering the image's persistent dirty bitmap
// bitmaps[target] as the NBD meta context qemu:dirty-bitmap:<bitmap>
// (qemu-nbd --bitmap). qemu-nbd refuses a bitmap the image lacks, and one
// marked in use (inconsistent: QEMU did not close the image, its VM
// crashed or was killed), and StartBitmapExport fails with its message.
func (c *Conn) StartBitmapExport(ctx context.Context, vm *VM, bitmaps map[string]string, beforeBegin func(*ColdExport) error) (*ColdExport, error) {
	targets := slices.Sorted(maps.Keys(bitmaps))
	e, err := c.newColdExport(vm, targets)
	if err != nil {
		return nil, err
	}
	e.bitmaps = maps.Clone(bitmaps)
	return e.start(ctx, c, beforeBegin)
}

// ExportBitmap is the dirty bitmap the export of target offers, "" when
// none (a StartColdExport).
func (e *ColdExport) ExportBitmap(target string) string { return e.bitmaps[target] }

func (e *ColdExport) start(ctx context.Context, c *Conn, beforeBegin func(*ColdExport) error) (*ColdExport, error) {
	var err error
	if beforeBegin != nil {
		if err := beforeBegin(e); err != nil {
			return nil, err
		}
	}
	if err := e.shutOff(c); err != nil {
		return nil, err
	}
	if e.stamps, err = e.imageStamps(ctx, c); err != nil {
		return nil, err
	}
	if err := e.serve(ctx, c); err != nil {
		return nil, errors.Join(err, e.Close(ctx))
	}
	e.log.Info("cold export started", "sockets", e.sockets, "through_sudo", e.sudo, "bitmaps", e.bitmaps)
	return e, nil
}

func (c *Conn) newColdExport(vm *VM, want []string) (*ColdExport, error) {
	var have []string
	for _, d := range vm.Disks {
		if d.Path != "" {
			have = append(have, d.Target)
		}
	}
	if len(want) == 0 {
		want = have
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("VM %s: no disks to copy", vm.Name)
	}
	id := make([]byte, 4)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	base := BackupPrefix + vm.UUID + "-" + hex.EncodeToString(id)
	e := &ColdExport{conn: c, vm: vm.Name, uuid: vm.UUID, log: c.log.With("vm", vm.Name, "export", base)}
	for _, t := range want {
		i := slices.IndexFunc(vm.Disks, func(d Disk) bool { return d.Target == t && d.Path != "" })
		if i < 0 {
			return nil, fmt.Errorf("VM %s: no disk %q (disks: %s)", vm.Name, t, strings.Join(have, ", "))
		}
		d := vm.Disks[i]
		if !strings.HasPrefix(d.Path, "/") {
			return nil, fmt.Errorf("VM %s disk %s: a shut-off VM's disk is copied from its file or "+
				"block device, and %q is neither", vm.Name, t, d.Path)
		}
		if d.Format == "" {
			d.Format = "raw"
		}
		if d.Format != "raw" && d.Format != "qcow2" {
			return nil, fmt.Errorf("VM %s disk %s: format %q cannot be copied cold (raw and qcow2 can)", vm.Name, t, d.Format)
		}
		e.disks = append(e.disks, d)
		e.sockets = append(e.sockets, path.Join(c.cfg.SocketDir, base+"-"+t+".sock"))
	}
	return e, nil
}

// shutOff fails with ErrVMStarted unless the VM is shut off.
func (e *ColdExport) shutOff(c *Conn) error {
	dom, err := c.virt.LookupDomainByUUIDString(e.uuid)
	if err != nil {
		return fmt.Errorf("look up VM %s: %w", e.vm, err)
	}
	defer dom.Free()
	state, _, err := dom.GetState()
	if err != nil {
		return fmt.Errorf("state of VM %s: %w", e.vm, err)
	}
	if state != libvirt.DOMAIN_SHUTOFF {
		return fmt.Errorf("%w: VM %s is %s, no longer shut off", ErrVMStarted, e.vm, stateName(state))
	}
	return nil
}

// imageStamps returns the size and modification time of the exported
// top image files (block devices: of their device node).
func (e *ColdExport) imageStamps(ctx context.Context, c *Conn) (string, error) {
	args := make([]string, len(e.disks))
	for i, d := range e.disks {
		args[i] = shellQuote(d.Path)
	}
	out, err := runRemote(ctx, c.ssh, "stat -L -c '%n %s %y' -- "+strings.Join(args, " "))
	if err != nil {
		return "", fmt.Errorf("images of VM %s: %w", e.vm, err)
	}
	return out, nil
}

// nbdImageOpts are qemu-nbd's --image-opts for reading d read-only with
// force-share; "$drv" stands for the file driver, set by the script.
func nbdImageOpts(d Disk) string {
	// QEMU 7.2's qemu-nbd has no --force-share; the block layer's
	// force-share option (with read-only) does the same. Commas in a
	// path are doubled in --image-opts.
	return fmt.Sprintf("driver=%s,read-only=on,force-share=on,file.driver=$drv,file.filename=%s",
		d.Format, strings.ReplaceAll(d.Path, ",", ",,"))
}

// nbdBitmapArg is qemu-nbd's options offering the dirty bitmap (none
// when bitmap is ""), with a leading space, and the shell test that holds
// until qemu-nbd is ready. qemu-nbd creates its socket before it checks
// the bitmap, and exits (leaving the socket) when the bitmap is missing or
// inconsistent; it writes its pid file only once the export is made, so a
// server with a bitmap is ready when that file is there too.
func nbdBitmapArg(sock, bitmap string) (args, notReady string) {
	s := shellQuote(sock)
	if bitmap == "" {
		return "", "[ ! -S " + s + " ]"
	}
	pf := shellQuote(pidFile(sock))
	return " --bitmap=" + shellQuote(bitmap) + " --pid-file=" + pf, "[ ! -S " + s + " ] || [ ! -e " + pf + " ]"
}

// pidFile is the pid file of the qemu-nbd serving sock with a bitmap;
// its name keeps the socket's prefix, so the janitor removes it with the
// socket.
func pidFile(sock string) string { return strings.TrimSuffix(sock, ".sock") + ".pid" }

// coldScript starts qemu-nbd, says "ready" once its socket exists, and
// stops it and removes the socket when its input ends; bitmap, when set,
// is the dirty bitmap it offers.
func coldScript(sock string, d Disk, bitmap string) string {
	s, p := shellQuote(sock), shellQuote(d.Path)
	args, notReady := nbdBitmapArg(sock, bitmap)
	return strings.Join([]string{
		"rm -f -- " + s,
		"drv=file; if [ -b " + p + " ]; then drv=host_device; fi",
		fmt.Sprintf("qemu-nbd --read-only --persistent --shared=4 --export-name=%s --socket=%s%s --image-opts %s </dev/null &",
			shellQuote(d.Target), s, args, strings.ReplaceAll(shellQuote(nbdImageOpts(d)), "$drv", "'$drv'")),
		"pid=$!",
		"while " + notReady + "; do if ! kill -0 $pid 2>/dev/null; then wait $pid; " +
			"echo \"qemu-nbd exited with status $?\" >&2; exit 1; fi; sleep 0.1; done",
		"echo ready",
		"cat >/dev/null",
		"kill $pid 2>/dev/null; wait $pid; rm -f -- " + s + " " + shellQuote(pidFile(sock)),
	}, "\n")
}

// serve starts one qemu-nbd per disk over c, each in its own session.
func (e *ColdExport) serve(ctx context.Context, c *Conn) error {
	images := make([]string, len(e.disks))
	for i, d := range e.disks {
		images[i] = d.Path
	}
	sudo, err := c.nbdThroughSudo(ctx, images)
	if err != nil {
		return fmt.Errorf("serve the disks of VM %s read-only: %w", e.vm, err)
	}
	var servers []*coldServer
	for i, d := range e.disks {
		s, err := startCold(ctx, c, e.sockets[i], d, e.bitmaps[d.Target], sudo)
		if err != nil {
			for _, s := range servers {
				s.stop(ctx)
			}
			return fmt.Errorf("serve disk %s of VM %s read-only (qemu-nbd on the source host): %w", d.Target, e.vm, err)
		}
		servers = append(servers, s)
	}
	e.mu.Lock()
	e.conn, e.servers, e.sudo = c, servers, sudo
	e.mu.Unlock()
	return nil
}

func startCold(ctx context.Context, c *Conn, sock string, d Disk, bitmap string, sudo bool) (*coldServer, error) {
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open SSH session: %w", err)
	}
	script := coldScript(sock, d, bitmap)
	if sudo {
		// The terminal's hang-up is what stops the sudo'd qemu-nbd.
		if err := s.RequestPty("dumb", 24, 80, ssh.TerminalModes{ssh.ECHO: 0}); err != nil {
			s.Close()
			return nil, fmt.Errorf("request a pseudo-terminal for sudo's qemu-nbd: %w", err)
		}
		script = sudoColdScript(sock, d, bitmap)
	}
	// The input stays open for the server's lifetime: its end stops it.
	stdin, err := s.StdinPipe()
	if err != nil {
		s.Close()
		return nil, err
	}
	stdout, err := s.StdoutPipe()
	if err != nil {
		s.Close()
		return nil, err
	}
	var stderr lockedBuffer
	s.Stderr = &stderr
	if err := s.Start(script); err != nil {
		s.Close()
		return nil, err
	}
	type started struct {
		pid int
		err error
	}
	ready := make(chan started, 1)
	go func() {
		// On a terminal, lines end in CR LF and errors come on stdout.
		r := bufio.NewReader(stdout)
		var seen []string
		for {
			line, err := r.ReadString('\n')
			line = strings.TrimRight(line, "\r\n")
			if err != nil {
				ready <- started{err: fmt.Errorf("%w: %s", io.ErrUnexpectedEOF, strings.Join(append(seen, line), " "))}
				break
			}
			if rest, ok := strings.CutPrefix(line, "ready"); ok {
				var pid int
				if sudo {
					if _, err := fmt.Sscan(rest, &pid); err != nil || pid <= 0 {
						ready <- started{err: fmt.Errorf("unexpected output %q", line)}
						break
					}
				}
				ready <- started{pid: pid}
				break
			}
			if !sudo {
				ready <- started{err: fmt.Errorf("unexpected output %q", line)}
				break
			}
			seen = append(seen, line)
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	timer := time.NewTimer(coldReadyTimeout)
	defer timer.Stop()
	var st started
	select {
	case st = <-ready:
		err = st.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = errors.New("qemu-nbd did not create its socket within " + coldReadyTimeout.String())
	}
	if err != nil {
		s.Close()
		_ = s.Wait()
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return nil, err
	}
	return &coldServer{session: s, stdin: stdin, conn: c, pid: st.pid}, nil
}

// VM is the exported VM's name; UUID its libvirt UUID.
func (e *ColdExport) VM() string { return e.vm }

// UUID is the exported VM's libvirt UUID.
func (e *ColdExport) UUID() string { return e.uuid }

// Sockets are the NBD sockets' paths on the source host, one per disk.
func (e *ColdExport) Sockets() []string { return slices.Clone(e.sockets) }

// OpenDisk opens a connection to a disk's qemu-nbd through SSH; an NBD
// client reads it with the disk's target as export name.
func (e *ColdExport) OpenDisk(ctx context.Context, target string) (net.Conn, error) {
	i := slices.IndexFunc(e.disks, func(d Disk) bool { return d.Target == target })
	if i < 0 {
		return nil, fmt.Errorf("cold export of VM %s has no disk %q", e.vm, target)
	}
	e.mu.Lock()
	closed, c := e.closed, e.conn
	e.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("cold export of VM %s is closed", e.vm)
	}
	conn, err := c.ssh.DialContext(ctx, "unix", e.sockets[i])
	if err != nil {
		return nil, fmt.Errorf("open NBD export %s of VM %s over SSH (socket %s): %w", target, e.vm, e.sockets[i], err)
	}
	return conn, nil
}

// Reattach serves the disks again over a new connection to the source,
// the servers having stopped with the old one; the VM must still be shut
// off with its images unchanged.
func (e *ColdExport) Reattach(c *Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := e.check(ctx, c); err != nil {
		return err
	}
	e.mu.Lock()
	old := e.servers
	e.servers = nil
	e.mu.Unlock()
	for _, s := range old {
		s.stop(ctx)
	}
	if err := e.serve(ctx, c); err != nil {
		return err
	}
	e.log.Info("cold export started again on a new source connection")
	return nil
}

// Check fails with ErrVMStarted when the VM is no longer shut off or its
// top image files changed since the export began.
func (e *ColdExport) Check(ctx context.Context) error {
	e.mu.Lock()
	c := e.conn
	e.mu.Unlock()
	return e.check(ctx, c)
}

// Running fails with ErrVMStarted when the VM is no longer shut off; a
// failure to ask is no answer (nil): the copy finds out itself.
func (e *ColdExport) Running() error {
	e.mu.Lock()
	c := e.conn
	e.mu.Unlock()
	if err := e.shutOff(c); errors.Is(err, ErrVMStarted) {
		return err
	}
	return nil
}

func (e *ColdExport) check(ctx context.Context, c *Conn) error {
	if err := e.shutOff(c); err != nil {
		return err
	}
	now, err := e.imageStamps(ctx, c)
	if err != nil {
		return err
	}
	if now != e.stamps {
		return fmt.Errorf("%w: the images of VM %s changed (before: %s; now: %s)", ErrVMStarted, e.vm,
			strings.TrimSpace(e.stamps), strings.TrimSpace(now))
	}
	return nil
}

// Close stops the servers and removes their sockets on the source host.
// It runs even when ctx is cancelled (bounded by a minute), may be called
// again after an error, and does nothing once it has succeeded.
func (e *ColdExport) Close(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	// Ending a session's input stops its qemu-nbd; waiting for the
	// session lets the shell remove the socket first.
	for _, s := range e.servers {
		s.stop(ctx)
	}
	e.servers = nil
	files := slices.Clone(e.sockets)
	if len(e.bitmaps) > 0 {
		for _, s := range e.sockets {
			files = append(files, pidFile(s))
		}
	}
	if err := removeFiles(ctx, e.conn, files); err != nil {
		return fmt.Errorf("end cold export of VM %s: %w", e.vm, err)
	}
	e.closed = true
	e.log.Info("cold export ended; qemu-nbd stopped and sockets removed")
	return nil
}

// removeFiles removes files on the source host.
func removeFiles(ctx context.Context, c *Conn, files []string) error {
	args := make([]string, len(files))
	for i, f := range files {
		args[i] = shellQuote(f)
	}
	_, err := runRemote(ctx, c.ssh, "rm -f -- "+strings.Join(args, " "))
	return err
}

// leftoverOf is the export as a leftover record sees it: a backup with no
// job whose socket and "scratch files" are the export's sockets (and the
// pid files of a bitmap export), so the janitor removes them (its qemu-nbd
// stopped with the SSH session).
func (e *ColdExport) leftoverOf() *Backup {
	scratch := slices.Clone(e.sockets[1:])
	if len(e.bitmaps) > 0 {
		for _, s := range e.sockets {
			scratch = append(scratch, pidFile(s))
		}
	}
	return &Backup{conn: e.conn, vm: e.vm, uuid: e.uuid, socket: e.sockets[0], scratch: scratch}
}
