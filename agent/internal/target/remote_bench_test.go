package target

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// BenchmarkUploadToAnotherHost is the benchmark: a cache image
// holding 1 GiB of data uploaded onto a volume another host's agent
// serves with qemu-nbd over TLS, by Ferry (NBDCopier: the pipeline,
// STARTTLS, data extents only) and by qemu-img convert to the same kind of
// export (nbds://, the same TLS credentials, verify-peer off on its side:
// qemu checks a server by host name, which agent certificates do not
// carry), side by side over the same link (loopback here), in the same
// run. It reports each one's MB/s and their ratio.
//
//	go test -run '^$' -bench UploadToAnotherHost -benchtime 1x ./agent/internal/target/
func BenchmarkUploadToAnotherHost(b *testing.B) {
	requireTools(b, "qemu-img", "qemu-nbd", "qemu-io")
	const data = 1 << 30
	pki := b.TempDir()
	if err := tlsutil.InitPKI(pki, tlsutil.Options{Agents: []string{"ms", "h2"}}); err != nil {
		b.Fatal(err)
	}
	dirOf := func(host string) string { return filepath.Join(pki, tlsutil.IdentityDir(agentID(host))) }
	img := filepath.Join(b.TempDir(), "cache.qcow2")
	run(b, "qemu-img", "create", "-q", "-f", "qcow2", img, "2G")
	run(b, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 512M", "-c", "write -P 0xa5 1G 512M", img)
	src := serveImageB(b, img)
	st := storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, b.TempDir(), "", "")
	ctx := context.Background()
	clientCreds := b.TempDir()
	for name, file := range map[string]string{"ca-cert.pem": tlsutil.CACertFile, "client-cert.pem": "agent.crt", "client-key.pem": "agent.key"} {
		raw, err := os.ReadFile(filepath.Join(dirOf("ms"), file))
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(clientCreds, name), raw, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	serve := func(job string) (Volume, *RemoteServer) {
		vol, err := NameVolume(st, job, "vda", 2<<30)
		if err != nil {
			b.Fatal(err)
		}
		if err := vol.Create(ctx, ExecCommander{}); err != nil {
			b.Fatal(err)
		}
		rs, err := ServeRemote(ctx, vol, RemoteConfig{IdentityDir: dirOf("h2"), Bind: "127.0.0.1", Peer: agentID("ms")})
		if err != nil {
			b.Fatal(err)
		}
		return vol, rs
	}
	var ferry, qemu time.Duration
	for i := 0; b.Loop(); i++ {
		vol, rs := serve("migrationJobs/f" + strconv.Itoa(i))
		cfg, err := tlsutil.PeerClientConfig(dirOf("ms"), agentID("h2"))
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := (&NBDCopier{}).Copy(ctx, src, Endpoint{Addr: rs.Addr(), TLS: cfg, Export: rs.Export()}, CopyOptions{DstZeroed: true}); err != nil {
			b.Fatal(err)
		}
		ferry += time.Since(start)
		_ = rs.Stop()
		_ = vol.Delete(ctx, ExecCommander{})

		vol, rs = serve("migrationJobs/q" + strconv.Itoa(i))
		start = time.Now()
		cmd := exec.Command("qemu-img", "convert", "-n", "-W", "-m", "8", "-f", "qcow2",
			"--target-image-opts", "--object", "tls-creds-x509,id=tls0,endpoint=client,verify-peer=off,dir="+clientCreds,
			img, "driver=nbd,host=127.0.0.1,port="+portOf(b, rs.Addr())+",export="+rs.Export()+",tls-creds=tls0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("qemu-img convert: %v: %s", err, out)
		}
		qemu += time.Since(start)
		_ = rs.Stop()
		_ = vol.Delete(ctx, ExecCommander{})
	}
	mbps := func(d time.Duration) float64 { return float64(b.N) * data / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(ferry), "ferry-MB/s")
	b.ReportMetric(mbps(qemu), "qemu-img-MB/s")
	b.ReportMetric(qemu.Seconds()/ferry.Seconds(), "ferry/qemu-img")
}

func portOf(b *testing.B, addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[i+1:]
		}
	}
	b.Fatalf("no port in %s", addr)
	return ""
}

// serveImageB is serveImage for a benchmark.
func serveImageB(b *testing.B, image string) Endpoint {
	b.Helper()
	sock := filepath.Join(shortTempDir(b), "src.sock")
	cmd := exec.Command("qemu-nbd", "--read-only", "--persistent", "--shared=8", "--socket="+sock, "--format=qcow2", image)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return Endpoint{Socket: sock}
		}
		if time.Now().After(deadline) {
			b.Fatal("qemu-nbd did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
