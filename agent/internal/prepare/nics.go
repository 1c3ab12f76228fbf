package prepare

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// nicScript names the target NICs inside the guest; see nics.sh.
//
//go:embed nics.sh
var nicScript []byte

// pinNICNames makes the guest on disks (root first) give each target NIC,
// found by its MAC, the name its network configuration uses for the
// source NIC (ens192 on a VMware vmxnet3 NIC; a virtio NIC would come up
// as enp1s0 and stay unconfigured): a systemd .link file and a udev rule
// per NIC, the i-th interface name the configuration mentions (ifupdown,
// NetworkManager, systemd-networkd, netplan) on the i-th target NIC. It
// returns the changes made.
func pinNICNames(ctx context.Context, disks, macs []string) ([]string, error) {
	if len(macs) == 0 {
		return nil, nil
	}
	tmp, err := os.MkdirTemp("", "ferry-nics-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	script := filepath.Join(tmp, "nics.sh")
	if err := os.WriteFile(script, nicScript, 0o600); err != nil {
		return nil, err
	}
	args := []string{"--rw", "-i", "--format=qcow2"}
	for _, d := range disks {
		args = append(args, "-a", d)
	}
	cmd := groupCommand(ctx, guestfish, args...)
	cmd.Env = libguestfsEnv()
	cmd.Stdin = strings.NewReader(fmt.Sprintf("upload %s /tmp/ferry-nics.sh\nsh \"/bin/sh /tmp/ferry-nics.sh %s\"\nrm-f /tmp/ferry-nics.sh\n",
		script, strings.Join(macs, " ")))
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("guestfish: %w: %s", err, lastLine(stderr.String()))
	}
	var changes []string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		if f := strings.Fields(strings.TrimPrefix(sc.Text(), "ferry-nic: ")); len(f) == 2 && strings.HasPrefix(sc.Text(), "ferry-nic: ") {
			changes = append(changes, fmt.Sprintf("NIC %s named %s, as the guest's network configuration names it", f[0], f[1]))
		}
	}
	return changes, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
