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
