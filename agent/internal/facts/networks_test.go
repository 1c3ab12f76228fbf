package facts

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestCollectReportsDHCPHosts defines a libvirt network (not started)
// with static DHCP hosts on the real libvirtd and finds them in the
// facts, with the MACs in lower case.
func TestCollectReportsDHCPHosts(t *testing.T) {
	lv := testenv.RequireLibvirt(t)
	name := fmt.Sprintf("ferry-coordfix-%d", os.Getpid())
	xml := `<network><name>` + name + `</name><bridge name='fcf` + fmt.Sprint(os.Getpid()%100000) + `'/>
  <ip address='192.0.2.1' netmask='255.255.255.0'><dhcp><range start='192.0.2.100' end='192.0.2.200'/>
    <host mac='52:54:00:AB:CD:01' name='web-1' ip='192.0.2.10'/>
    <host mac='52:54:00:ab:cd:02' ip='192.0.2.11'/>
  </dhcp></ip></network>`
	path := filepath.Join(t.TempDir(), "net.xml")
	if err := os.WriteFile(path, []byte(xml), 0o600); err != nil {
		t.Fatal(err)
	}
	lv.Virsh(t, "net-define", path)
	t.Cleanup(func() { _, _ = lv.TryVirsh("net-undefine", name) })

	f := New("", nil).Collect(context.Background())
	for _, n := range f.GetLibvirtNetworks() {
		if n.GetName() != name {
			continue
		}
		got := fmt.Sprint(n.GetDhcpHosts())
		want := `[mac:"52:54:00:ab:cd:01" ip:"192.0.2.10" name:"web-1" mac:"52:54:00:ab:cd:02" ip:"192.0.2.11"]`
		if len(n.GetDhcpHosts()) != 2 || n.GetDhcpHosts()[0].GetMac() != "52:54:00:ab:cd:01" || n.GetDhcpHosts()[0].GetIp() != "192.0.2.10" ||
			n.GetDhcpHosts()[0].GetName() != "web-1" || n.GetDhcpHosts()[1].GetMac() != "52:54:00:ab:cd:02" || n.GetDhcpHosts()[1].GetIp() != "192.0.2.11" {
			t.Fatalf("DHCP hosts of %s = %s, want %s", name, got, want)
		}
		return
	}
	t.Fatalf("network %s not in the facts: %v", name, f.GetLibvirtNetworks())
}

// TestParseNetwork reads the DHCP hosts of every IP range, IPv6 ones
// (which name no MAC) included.
func TestParseNetwork(t *testing.T) {
	n, err := parseNetwork([]byte(`<network><name>lan</name><forward mode='nat'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><range start='192.168.122.2' end='192.168.122.254'/>
    <host mac='52:54:00:AA:00:01' name='a' ip='192.168.122.10'/></dhcp></ip>
  <ip family='ipv6' address='fd00::1' prefix='64'><dhcp><host id='0:3:0:1:0:16:3e:11:22:33' name='b' ip='fd00::10'/></dhcp></ip>
</network>`))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintln(n.GetName(), len(n.GetDhcpHosts()), n.GetDhcpHosts()[0].GetMac(), n.GetDhcpHosts()[0].GetIp(), n.GetDhcpHosts()[1].GetMac(), n.GetDhcpHosts()[1].GetIp())
	if want := "lan 2 52:54:00:aa:00:01 192.168.122.10  fd00::10\n"; got != want {
		t.Fatalf("parsed %q, want %q", got, want)
	}
	if _, err := parseNetwork([]byte("<network")); err == nil {
		t.Error("a truncated network XML parsed")
	}
}
