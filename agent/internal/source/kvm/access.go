package kvm

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// UserDir is where a non-root SSH user's snapshot overlays go, under its
// home directory: it may create files there, and QEMU may reach them
// through the directory's mode 0711. The read-only qemu-nbd sockets go in
// its subdirectory UserSocketDir (mode 0700): a qemu-nbd started through
// sudo makes a socket any local user could connect to (the user's umask
// 000, as the user must connect to root's socket), which only the
// directory keeps private.
const (
	UserDir       = ".ferry"
	UserSocketDir = ".ferry/nbd"
)

// The commands a non-root SSH user may be allowed to run through sudo
// without a password (docs/sudoers.ferry). Their paths are fixed, as
// sudoers names them.
const (
	SudoVirtSSHHelper = "/usr/bin/virt-ssh-helper"
	SudoQEMUNBD       = "/usr/bin/qemu-nbd"
	// SudoersFile is the sudoers snippet, as the README and the messages
	// of a user without it name it.
	SudoersFile = "docs/sudoers.ferry"
)

// sudoLibvirtCommand is libvirt's stdio bridge to the system daemon,
// run through sudo: its stdin and stdout are a libvirt RPC connection.
const sudoLibvirtCommand = "sudo -n " + SudoVirtSSHHelper + " qemu:///system"

// probeUser asks who the SSH user is and whether it is in group
// libvirt. A user other than root gets its overlays in ~/.ferry (made
// 0711 here) and its sockets in ~/.ferry/nbd (0700) unless the
// configuration names other directories. What sudo allows it is asked
// only when needed (sudoAllows): sudo logs a user it does not know each
// time it is asked.
func (c *Conn) probeUser(ctx context.Context, ownDirs bool) error {
	out, err := runRemote(ctx, c.ssh, `id -u; printf '%s\n' "$HOME"
id -Gn | tr ' ' '\n' | grep -qx libvirt && echo group-libvirt
true`)
	if err != nil {
		return fmt.Errorf("who the SSH user is on source %s: %w", c.cfg.hostPort(), err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	uid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || len(lines) < 2 {
		return fmt.Errorf("who the SSH user is on source %s: unexpected output %q", c.cfg.hostPort(), out)
	}
	c.uid, c.home = uid, strings.TrimSpace(lines[1])
	c.inGroupLibvirt = slices.Contains(lines[2:], "group-libvirt")
	if uid == 0 || !ownDirs {
		return nil
	}
	if !path.IsAbs(c.home) || strings.ContainsAny(c.home, "'\n") {
		return fmt.Errorf("SSH user %s on source %s has an unusable home directory %q", c.cfg.User, c.cfg.hostPort(), c.home)
	}
	dir, sockets := path.Join(c.home, UserDir), path.Join(c.home, UserSocketDir)
	if _, err := runRemote(ctx, c.ssh, "mkdir -p "+shellQuote(sockets)+" && chmod 0711 "+shellQuote(dir)+
		" && chmod 0700 "+shellQuote(sockets)); err != nil {
		return fmt.Errorf("make %s for the SSH user's sockets and overlays: %w", dir, err)
	}
	c.cfg.SocketDir, c.cfg.ScratchDir = sockets, dir
	return nil
}

// sudoAllows asks whether the SSH user may run command (with arguments)
// through sudo without a password (`sudo -n -l`); a failure to ask is a
// no.
func (c *Conn) sudoAllows(ctx context.Context, command string) bool {
	if c.uid == 0 {
		return false
	}
	_, err := runRemote(ctx, c.ssh, "command -v sudo >/dev/null 2>&1 && sudo -n -l "+command+" >/dev/null 2>&1")
	return err == nil
}

// sudoAllowsNBD says (asking once) whether the non-root SSH user may run
// the read-only qemu-nbd through sudo.
func (c *Conn) sudoAllowsNBD(ctx context.Context) bool {
	c.sudoMu.Lock()
	defer c.sudoMu.Unlock()
	if c.sudoNBD == nil {
		ok := c.sudoAllows(ctx, SudoQEMUNBD+" --read-only --socket=/probe")
		if ctx.Err() != nil {
			return ok
		}
		c.sudoNBD = &ok
	}
	return *c.sudoNBD
}

// nbdThroughSudo says whether the read-only qemu-nbd serving images runs
// as root through sudo: for a non-root user that cannot read every one
// of them itself and that sudo allows it.
func (c *Conn) nbdThroughSudo(ctx context.Context, images []string) (bool, error) {
	if c.uid == 0 || len(images) == 0 {
		return false, nil
	}
	args := make([]string, len(images))
	for i, f := range images {
		args[i] = shellQuote(f)
	}
	out, err := runRemote(ctx, c.ssh, "for f in "+strings.Join(args, " ")+`; do [ -r "$f" ] || echo "$f"; done`)
	if err != nil {
		return false, fmt.Errorf("which images user %s may read: %w", c.cfg.User, err)
	}
	if strings.TrimSpace(out) == "" {
		return false, nil
	}
	return c.sudoAllowsNBD(ctx), nil
}

// Root says whether the SSH user is root (uid 0).
func (c *Conn) Root() bool { return c.uid == 0 }

// canBackup says whether the SSH user can run the backup method: only
// root reaches the NBD socket QEMU makes in /var/lib/libvirt/qemu.
func (c *Conn) canBackup() bool { return c.uid == 0 }

// Capabilities says, for each thing Ferry does with a KVM source, whether
// the SSH user can do it, how, and otherwise exactly what it lacks:
// listing VMs needs libvirt (root, group libvirt, a SASL user, or sudo
// for virt-ssh-helper: this connection has it); a live copy through the
// backup API needs root; the snapshot method and the cold copy need root,
// or qemu-nbd with read access to every image of vms (backing files too)
// or through sudo, and a home directory QEMU may traverse to the
// overlays.
func (c *Conn) Capabilities(ctx context.Context, vms []*VM) []*ferryv1.SourceCapability {
	via := "libvirt through the SSH user (group libvirt or SASL)"
	switch {
	case c.uid == 0:
		via = "root"
	case c.viaSudo:
		via = "sudo for libvirt's " + SudoVirtSSHHelper + " (" + SudoersFile + ")"
	}
	out := []*ferryv1.SourceCapability{{Kind: ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIST_VMS, Available: true, Via: via}}
	live := &ferryv1.SourceCapability{Kind: ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIVE_COPY}
	old := &ferryv1.SourceCapability{Kind: ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_OLD_HOST_COPY}
	out = append(out, live, old)
	if c.uid == 0 {
		live.Available, live.Via = true, "root"
		old.Available, old.Via = true, "root"
		return out
	}
	live.Missing = fmt.Sprintf("a root login (user %s is uid %d): the backup API's NBD socket is made by QEMU in "+
		"%s, which only root reaches; running VMs are copied by the snapshot method instead", c.cfg.User, c.uid, DefaultSocketDir)
	missing, unread, err := c.oldHostMissing(ctx, vms)
	switch {
	case err != nil:
		old.Missing = "unknown: " + err.Error()
	case len(missing) > 0:
		old.Missing = strings.Join(missing, "; ")
	case unread && c.viaSudo:
		old.Available, old.Via = true, via+", and sudo for "+SudoQEMUNBD+" --read-only ("+SudoersFile+")"
	case unread:
		old.Available, old.Via = true, "group libvirt, and sudo for "+SudoQEMUNBD+" --read-only ("+SudoersFile+")"
	case c.viaSudo:
		old.Available, old.Via = true, via+", and read access to the images"
	default:
		old.Available, old.Via = true, "group libvirt and read access to the images"
	}
	return out
}

// oldHostMissing lists what a non-root user lacks for the snapshot
// method and the cold copy; unread says that it cannot read some images
// but sudo lets it read them through qemu-nbd.
func (c *Conn) oldHostMissing(ctx context.Context, vms []*VM) (missing []string, unread bool, err error) {
	var b strings.Builder
	b.WriteString("command -v qemu-nbd >/dev/null || echo 'nocmd qemu-nbd'\n")
	b.WriteString("command -v qemu-img >/dev/null || echo 'nocmd qemu-img'\n")
	fmt.Fprintf(&b, "[ -x %s ] && [ \"$(stat -c %%A %s | cut -c10)\" = x ] || echo 'nohome'\n", shellQuote(c.home), shellQuote(c.home))
	// Each image and its backing chain, as far as the user can read it.
	for i, vm := range vms {
		for _, d := range vm.Disks {
			if !strings.HasPrefix(d.Path, "/") || d.ReadOnly {
				continue
			}
			fmt.Fprintf(&b, "f=%s; while [ -n \"$f\" ]; do if [ ! -r \"$f\" ]; then echo \"noread %d $f\"; break; fi; "+
				"f=$(qemu-img info -U --output=json \"$f\" 2>/dev/null | sed -n 's/^ *\"full-backing-filename\": \"\\(.*\\)\",*$/\\1/p'); done\n",
				shellQuote(d.Path), i)
		}
	}
	out, err := runRemote(ctx, c.ssh, b.String())
	if err != nil {
		return nil, false, err
	}
	noread := map[int][]string{} // by VM
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch kind, arg, _ := strings.Cut(line, " "); kind {
		case "nocmd":
			missing = append(missing, arg+" on the source host's PATH")
		case "nohome":
			missing = append(missing, fmt.Sprintf("a home directory others may traverse (chmod o+x %s): QEMU opens the snapshot overlays in %s",
				c.home, path.Join(c.home, UserDir)))
		case "noread":
			n, file, _ := strings.Cut(arg, " ")
			if i, err := strconv.Atoi(n); err == nil && i < len(vms) && !slices.Contains(noread[i], file) {
				noread[i] = append(noread[i], file)
			}
		}
	}
	if len(noread) > 0 && c.sudoAllowsNBD(ctx) {
		return missing, true, nil
	}
	if len(noread) > 0 {
		var per []string
		for i, vm := range vms {
			if files := noread[i]; len(files) > 0 {
				per = append(per, fmt.Sprintf("VM %s: %s", vm.Name, strings.Join(files, ", ")))
			}
		}
		missing = append(missing, fmt.Sprintf("read access for user %s to the images of %s "+
			"(or sudo without a password for %s --read-only, as %s allows)", c.cfg.User, strings.Join(per, "; "), SudoQEMUNBD, SudoersFile))
	}
	return missing, false, nil
}
