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

// UserDir is where a non-root SSH user's sockets and snapshot overlays go,
// under its home directory: it may create files there, and QEMU may reach
// them through the directory's mode 0711.
const UserDir = ".ferry"

// probeUser asks who the SSH user is. A user other than root gets its
// sockets and overlays in ~/.ferry (made 0711 here) unless the
// configuration names other directories.
func (c *Conn) probeUser(ctx context.Context, ownDirs bool) error {
	out, err := runRemote(ctx, c.ssh, `id -u; printf '%s\n' "$HOME"`)
	if err != nil {
		return fmt.Errorf("who the SSH user is on source %s: %w", c.cfg.hostPort(), err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	uid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || len(lines) < 2 {
		return fmt.Errorf("who the SSH user is on source %s: unexpected output %q", c.cfg.hostPort(), out)
	}
	c.uid, c.home = uid, strings.TrimSpace(lines[1])
	if uid == 0 || !ownDirs {
		return nil
	}
	if !path.IsAbs(c.home) || strings.ContainsAny(c.home, "'\n") {
		return fmt.Errorf("SSH user %s on source %s has an unusable home directory %q", c.cfg.User, c.cfg.hostPort(), c.home)
	}
	dir := path.Join(c.home, UserDir)
	if _, err := runRemote(ctx, c.ssh, "mkdir -p "+shellQuote(dir)+" && chmod 0711 "+shellQuote(dir)); err != nil {
		return fmt.Errorf("make %s for the SSH user's sockets and overlays: %w", dir, err)
	}
	c.cfg.SocketDir, c.cfg.ScratchDir = dir, dir
	return nil
}

// Root says whether the SSH user is root (uid 0).
func (c *Conn) Root() bool { return c.uid == 0 }

// canBackup says whether the SSH user can run the backup method: only
// root reaches the NBD socket QEMU makes in /var/lib/libvirt/qemu.
func (c *Conn) canBackup() bool { return c.uid == 0 }

// Capabilities says, for each thing Ferry does with a KVM source, whether
// the SSH user can do it, how, and otherwise exactly what it lacks:
// listing VMs needs libvirt (root, group libvirt, or a SASL user: this
// connection has it); a live copy through the backup API needs root; the
// snapshot method and the cold copy need root, or qemu-nbd with read
// access to every image of vms (backing files too) and a home directory
// QEMU may traverse to the overlays.
func (c *Conn) Capabilities(ctx context.Context, vms []*VM) []*ferryv1.SourceCapability {
	via := "libvirt through the SSH user (group libvirt or SASL)"
	if c.uid == 0 {
		via = "root"
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
	missing, err := c.oldHostMissing(ctx, vms)
	switch {
	case err != nil:
		old.Missing = "unknown: " + err.Error()
	case len(missing) == 0:
		old.Available, old.Via = true, "group libvirt and read access to the images"
	default:
		old.Missing = strings.Join(missing, "; ")
	}
	return out
}

// oldHostMissing lists what a non-root user lacks for the snapshot
// method and the cold copy.
func (c *Conn) oldHostMissing(ctx context.Context, vms []*VM) ([]string, error) {
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
		return nil, err
	}
	var missing []string
	unread := map[int][]string{} // by VM
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch kind, arg, _ := strings.Cut(line, " "); kind {
		case "nocmd":
			missing = append(missing, arg+" on the source host's PATH")
		case "nohome":
			missing = append(missing, fmt.Sprintf("a home directory others may traverse (chmod o+x %s): QEMU opens the snapshot overlays in %s",
				c.home, path.Join(c.home, UserDir)))
		case "noread":
			n, file, _ := strings.Cut(arg, " ")
			if i, err := strconv.Atoi(n); err == nil && i < len(vms) && !slices.Contains(unread[i], file) {
				unread[i] = append(unread[i], file)
			}
		}
	}
	if len(unread) > 0 {
		var per []string
		for i, vm := range vms {
			if files := unread[i]; len(files) > 0 {
				per = append(per, fmt.Sprintf("VM %s: %s", vm.Name, strings.Join(files, ", ")))
			}
		}
		missing = append(missing, fmt.Sprintf("read access for user %s to the images of %s", c.cfg.User, strings.Join(per, "; ")))
	}
	return missing, nil
}
