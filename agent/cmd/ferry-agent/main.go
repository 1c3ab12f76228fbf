// Command ferry-agent runs on every target KVM host: it holds a session
// with the coordinators' leader, reports the host's facts and runs the
// migration jobs assigned to it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/config"
	"github.com/ferry-v2v/ferry/agent/internal/export"
	"github.com/ferry-v2v/ferry/agent/internal/facts"
	"github.com/ferry-v2v/ferry/agent/internal/metrics"
	"github.com/ferry-v2v/ferry/agent/internal/prepare"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/agent/internal/session"
	"github.com/ferry-v2v/ferry/agent/internal/source/bundlesrc"
	"github.com/ferry-v2v/ferry/agent/internal/source/kvm"
	"github.com/ferry-v2v/ferry/agent/internal/source/vmware"
	"github.com/ferry-v2v/ferry/agent/internal/target"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/promserve"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ferry-agent:", err)
		}
		os.Exit(2)
	}
}

// parseFlags fills a Config from the command line.
func parseFlags(args []string, stderr io.Writer) (config.Config, slog.Level, error) {
	fs := flag.NewFlagSet("ferry-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostname, _ := os.Hostname()
	cfg := config.Config{Version: version}
	var coordinators string
	level := slog.LevelInfo
	fs.StringVar(&coordinators, "coordinator", "127.0.0.1:7443", "coordinator API addresses, ADDR[,ADDR]; any one will do")
	fs.StringVar(&cfg.HostName, "host-name", hostname, "this host's name (the host resource is hosts/NAME)")
	fs.StringVar(&cfg.DataDir, "data-dir", "./ferry-agent-data", "directory for the agent's state and job caches")
	fs.StringVar(&cfg.Cluster, "cluster", "", "target cluster of this host, clusters/NAME or NAME")
	fs.StringVar(&cfg.CachePath, "cache-path", "", "absolute path on a disk whose size and free space are reported as cache facts, for display (cache admission measures each migration server's cache_path, which the coordinator names); only job caches Ferry made there are ever reclaimed")
	fs.StringVar(&cfg.MigrationAddress, "migration-address", "", "this host's IP address on the migration network, where it serves the volumes of VMs placed on it to another host's migration server that has no migration CIDR")
	fs.StringVar(&cfg.TLSDir, "tls-dir", "", "this host's certificate directory (ca.crt, agent.crt, agent.key; from 'ferry-coordinator tls issue --role agent --host HOST'), or a PKI root holding agents/HOST")
	fs.StringVar(&cfg.CAFile, "ca", "", "CA certificate file (with --cert and --key)")
	fs.StringVar(&cfg.CertFile, "cert", "", "agent certificate file")
	fs.StringVar(&cfg.KeyFile, "key", "", "agent private key file")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "talk plaintext to the coordinators (testing only)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "address of the Prometheus /metrics endpoint (off when empty): plain HTTP on a loopback address, else HTTPS with the agent's certificate and a client certificate of role operator or viewer")
	fs.TextVar(&level, "log-level", level, "log level: debug, info, warn, error")
	fs.DurationVar(&cfg.SourceRetryBudget, "source-retry-budget", config.DefaultSourceRetryBudget,
		"how long a copy whose source connection dropped keeps reconnecting before its job fails")
	fs.DurationVar(&cfg.SourceKeepalive, "source-keepalive", config.DefaultSourceKeepalive,
		"how often source SSH connections are probed; one silent for three probes counts as dropped")
	fs.DurationVar(&cfg.SourceCleanupInterval, "source-cleanup-interval", config.DefaultSourceCleanupInterval,
		"how often backups that failed or crashed jobs left on sources are looked for and ended")
	fs.Func("kvm-force-snapshot", "copy the running and paused VMs of KVM source sources/NAME by the snapshot method (external snapshot, read the original images, block commit) even when the source has the backup API; for testing; repeatable",
		func(v string) error {
			if !strings.HasPrefix(v, "sources/") || len(v) == len("sources/") {
				return fmt.Errorf("%q is not a source name sources/NAME", v)
			}
			cfg.KVMForceSnapshot = append(cfg.KVMForceSnapshot, v)
			return nil
		})
	fs.Uint64Var(&cfg.KVMCommitBandwidth, "kvm-commit-bandwidth", 0,
		"MiB/s the snapshot method's block commit may write on a KVM source host (0: no limit)")
	fs.BoolVar(&cfg.KVMImageFileReader, "kvm-image-file-reader", false,
		"make the snapshot method read a KVM source's image files with their allocation maps (qemu-img map, dd over SSH) even where the source host has qemu-nbd; for testing")
	fs.StringVar(&cfg.DomainType, "domain-type", "auto",
		"libvirt domain type of target VMs: auto (kvm when libvirt offers it), kvm, or qemu (TCG, for hosts whose KVM does not work, such as some nested VMs)")
	fs.DurationVar(&cfg.VerifyBootTimeout, "verify-boot-timeout", target.DefaultBootTimeout,
		"how long a job with verify_boot waits for its started target VM's guest to show it booted (guest agent, DHCP lease or serial console) before it fails; a target VM placed on another host waits at most 90s")
	if err := fs.Parse(args); err != nil {
		return cfg, level, err
	}
	if fs.NArg() > 0 {
		return cfg, level, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	cfg.Coordinators = config.SplitAddresses(coordinators)
	return cfg, level, nil
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, level, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	creds, err := cfg.TransportCredentials()
	if err != nil {
		return fmt.Errorf("TLS: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	outbox := session.NewOutbox()
	kvmDriver := kvm.NewDriver(log, outbox, kvm.Options{RetryBudget: cfg.SourceRetryBudget, KeepaliveInterval: cfg.SourceKeepalive,
		ForceSnapshot: cfg.KVMForceSnapshot, CommitBandwidth: cfg.KVMCommitBandwidth,
		ImageFileReader: cfg.KVMImageFileReader, StateDir: filepath.Join(cfg.DataDir, "source-cleanup")})
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "source-cleanup"), 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	drivers := runner.Drivers{
		Sources: map[ferryv1.Platform]runner.Source{
			ferryv1.Platform_PLATFORM_KVM:    kvmDriver,
			ferryv1.Platform_PLATFORM_VMWARE: vmware.NewDriver(log, vmware.Options{RetryBudget: cfg.SourceRetryBudget}),
			ferryv1.Platform_PLATFORM_BUNDLE: bundlesrc.New(log),
		},
		Preparer: prepare.New(log),
	}
	fences := session.NewFences(outbox, log)
	signer := session.NewSigner(outbox, log)
	drivers.Exporter = export.New(export.Options{Log: log, Version: cfg.Version, MountDir: filepath.Join(cfg.DataDir, "mounts"), Signer: signer})
	targets := session.NewTargets(outbox, log)
	targetOpts := target.Options{Log: log, DomainType: domainType(cfg.DomainType), BootTimeout: cfg.VerifyBootTimeout}
	worker := target.NewWorker(target.WorkerConfig{IdentityDir: cfg.IdentityDir(), MigrationAddress: cfg.MigrationAddress,
		Fence: fences.Confirm, Options: targetOpts,
		Undo: func(ctx context.Context, job string, epoch int64) error {
			return fences.ConfirmUndo(ctx, job, epoch, "")
		}})
	defer worker.Close()
	var client *session.Client
	// An upload onto another host waits for it as long as the
	// coordinators wait for an agent: their grace period.
	targetOpts.Remote = target.Remote{HostName: cfg.HostName, IdentityDir: cfg.IdentityDir(), Targets: targets,
		RetryBudgetFunc: func() time.Duration { return client.GracePeriod() }}
	drivers.Target = target.NewDriver(target.DefaultLibvirtURI, targetOpts)
	meter := metrics.New(cfg.CachePath)
	scrape, err := listenMetrics(cfg, meter, log)
	if err != nil {
		return err
	}
	r := runner.New(runner.Config{DataDir: cfg.DataDir}, runner.Deps{Drivers: drivers, Reporter: meter.Wrap(outbox), Fencer: fences, Logger: log,
		ReleaseMemory: releaseMemory})
	client = session.New(session.Config{
		Coordinators: cfg.Coordinators, HostName: cfg.HostName, Cluster: cfg.Cluster,
		AgentVersion: cfg.Version, Credentials: creds,
	}, session.Deps{Runner: r, Facts: facts.New(cfg.CachePath, log), Outbox: outbox, Fences: fences, Signer: signer,
		Targets: targets, Worker: worker, Logger: log, OnSession: meter.Session})

	log.Info("ferry-agent starting", "version", version, "host", cfg.HostName, "coordinators", cfg.Coordinators)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.Run(ctx) })
	if scrape != nil {
		g.Go(func() error { return scrape.Serve(ctx) })
	}
	g.Go(func() error { return client.Run(ctx) })
	g.Go(func() error { kvmDriver.Janitor(ctx, cfg.SourceCleanupInterval); return nil })
	g.Go(func() error {
		held := func() []string {
			var ids []string
			for _, h := range r.Held() {
				ids = append(ids, path.Base(h.GetJob()))
			}
			return ids
		}
		cache.RunReclaim(ctx, []string{cfg.CachePath, filepath.Join(cfg.DataDir, "cache")}, cache.ReclaimInterval,
			client.CacheRetention, held, log)
		return nil
	})
	return g.Wait()
}

// domainType is the target.Options value of --domain-type: "" for auto.
func domainType(flag string) string {
	if flag == "auto" {
		return ""
	}
	return flag
}

// listenMetrics binds --metrics-listen, nil when it is empty.
func listenMetrics(cfg config.Config, m *metrics.Metrics, log *slog.Logger) (*promserve.Server, error) {
	if cfg.MetricsListen == "" {
		return nil, nil
	}
	opts := promserve.Options{Addr: cfg.MetricsListen, Gatherer: m.Registry(), Logger: log}
	if !promserve.IsLoopback(cfg.MetricsListen) {
		tc, err := cfg.MetricsTLS()
		if err != nil {
			return nil, fmt.Errorf("--metrics-listen: %w", err)
		}
		opts.TLS = tc
	}
	return promserve.Listen(opts)
}
