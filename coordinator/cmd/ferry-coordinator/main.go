// Command ferry-coordinator runs one node of Ferry's coordinator cluster.
//
// With no --join it bootstraps a one-node cluster in --data-dir and serves
// at once (the embedded default). Subcommands prepare a real install:
// "keygen" writes a seal key, "tls init" writes a CA and certificates,
// "tls issue" signs one more certificate with that CA.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ferry-v2v/ferry/coordinator/internal/config"
	"github.com/ferry-v2v/ferry/coordinator/internal/server"
	"github.com/ferry-v2v/ferry/pkg/seal"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ferry-coordinator:", err)
		}
		os.Exit(2)
	}
}

func run(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "keygen":
			return keygen(args[1:])
		case "tls":
			return tlsCmd(args[1:])
		case "serve":
			args = args[1:]
		}
	}
	return serve(args)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("ferry-coordinator", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ferry-coordinator [flags]
       ferry-coordinator keygen --out FILE
       ferry-coordinator tls init --dir DIR [--host NAME_OR_IP ...] [--agent HOST ...]
       ferry-coordinator tls issue --dir DIR --role agent --host HOST
       ferry-coordinator tls issue --dir DIR --role operator|viewer|coordinator --name NAME

Runs one coordinator node. With no --join, the node bootstraps a one-node
cluster in --data-dir and serves at once, making its own seal key and TLS
certificates there (the embedded default). To grow a cluster, start more
nodes with --join pointing at a member, the same --tls-dir and --key-file.
--tls-dir is a PKI root from 'tls init' or its coordinator/ directory.

Flags:
`)
		fs.PrintDefaults()
	}
	var cfg config.Config
	var join, level string
	fs.StringVar(&cfg.NodeID, "node-id", "", "stable node ID (default: generated once and kept in the data dir)")
	fs.StringVar(&cfg.DataDir, "data-dir", config.DefaultDataDir, "Raft log, snapshots, seal key and default TLS material")
	fs.StringVar(&cfg.Listen, "listen", config.DefaultListen, "gRPC address for the API and agent streams")
	fs.StringVar(&cfg.Advertise, "advertise", "", "API address others dial (default: the --listen address)")
	fs.StringVar(&cfg.RaftListen, "raft-listen", config.DefaultRaftListen, "Raft transport address (mutual TLS with the coordinator certificate, plain TCP under --insecure)")
	fs.StringVar(&cfg.RaftAdvertise, "raft-advertise", "", "Raft address peers dial (default: the --raft-listen address)")
	fs.StringVar(&join, "join", "", "comma-separated API addresses of existing members; empty bootstraps a new cluster")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "serve plaintext gRPC and plain-TCP Raft without TLS (trying things out only)")
	fs.StringVar(&cfg.TLSDir, "tls-dir", "", "PKI directory from 'ferry-coordinator tls init' (default: DATA_DIR/tls, created)")
	fs.StringVar(&cfg.KeyFile, "key-file", "", "seal key for credentials (default: DATA_DIR/seal.key, created when bootstrapping)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.Uint64Var(&cfg.SnapshotThreshold, "snapshot-threshold", 0, "new Raft log entries that trigger a ledger snapshot (default 8192)")
	fs.DurationVar(&cfg.SnapshotInterval, "snapshot-interval", 0, "how often Raft checks --snapshot-threshold (default 2m)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "address of the Prometheus /metrics endpoint (off when empty): plain HTTP on a loopback address, else HTTPS with the API's certificate and a client certificate of role operator or viewer")
	fs.DurationVar(&cfg.AuditRetention, "audit-retention", config.DefaultAuditRetention, "how long audit events are kept (stamped by the leader into each event it records)")
	fs.IntVar(&cfg.AuditMaxEvents, "audit-max-events", config.DefaultAuditMaxEvents, "how many audit events are kept at most")
	fs.DurationVar(&cfg.ForwardTimeout, "forward-timeout", 0, "how long a call forwarded to a leader this node no longer hears from, or a linearizable read, waits before answering UNAVAILABLE with the leader known then (default 4 Raft heartbeat timeouts, 2s)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if join != "" {
		cfg.Join = strings.Split(join, ",")
	}
	log, err := newLogger(level)
	if err != nil {
		return err
	}
	srv, err := server.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return srv.Run(ctx)
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func keygen(args []string) error {
	fs := flag.NewFlagSet("ferry-coordinator keygen", flag.ContinueOnError)
	out := fs.String("out", "seal.key", "file to write the 32-byte AES-256-GCM key to (mode 0600, never overwritten)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := seal.GenerateKeyFile(*out); err != nil {
		return err
	}
	fmt.Println("wrote", *out)
	return nil
}

type hosts []string

func (h *hosts) String() string     { return strings.Join(*h, ",") }
func (h *hosts) Set(v string) error { *h = append(*h, strings.Split(v, ",")...); return nil }

const tlsUsage = `usage: ferry-coordinator tls init --dir DIR [--host NAME_OR_IP ...] [--agent HOST ...]
       ferry-coordinator tls issue --dir DIR --role agent --host HOST
       ferry-coordinator tls issue --dir DIR --role operator|viewer|coordinator --name NAME

Every certificate carries one identity, ferry://ROLE/NAME, in a URI subject
alternative name; the coordinators authorize each call from its role. An
agent's name is its host's name: the agent of kvm-7 can only say hello as
kvm-7. DIR gets ca.crt and ca.key (keep ca.key on coordinators only) and one
directory per certificate, holding ca.crt and its own pair only:

  DIR/coordinator/     every coordinator (--tls-dir DIR or DIR/coordinator)
  DIR/operator/        the first operator, ferryctl (ferryctl --tls-dir DIR/operator)
  DIR/agents/HOST/     the agent of HOST: copy only this directory to HOST
  DIR/operators/NAME/  DIR/viewers/NAME/   more operators and read-only viewers`

func tlsCmd(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "init":
			return tlsInit(args[1:])
		case "issue":
			return tlsIssue(args[1:])
		case "-h", "-help", "--help", "help":
			fmt.Println(tlsUsage)
			return nil
		}
	}
	return errors.New(tlsUsage)
}

func tlsInit(args []string) error {
	fs := flag.NewFlagSet("ferry-coordinator tls init", flag.ContinueOnError)
	dir := fs.String("dir", "ferry-tls", "PKI root: ca.crt, ca.key and one directory per certificate")
	var extra, agents hosts
	fs.Var(&extra, "host", "extra DNS name or IP for the coordinator certificate (repeatable)")
	fs.Var(&agents, "agent", "host name to issue an agent certificate for, into DIR/agents/HOST (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := tlsutil.InitPKI(*dir, tlsutil.Options{Hosts: extra, Agents: agents}); err != nil {
		return err
	}
	fmt.Println("wrote CA and certificates to", *dir)
	return nil
}

func tlsIssue(args []string) error {
	fs := flag.NewFlagSet("ferry-coordinator tls issue", flag.ContinueOnError)
	dir := fs.String("dir", "ferry-tls", "PKI root from 'tls init' (its ca.key signs)")
	role := fs.String("role", "", "agent, operator, viewer or coordinator")
	name := fs.String("name", "", "the identity's name (operator, viewer, coordinator)")
	host := fs.String("host", "", "the agent's host name (role agent; same as --name)")
	var extra hosts
	fs.Var(&extra, "san", "extra DNS name or IP of a coordinator certificate (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	n := *name
	if *host != "" {
		if n != "" && n != *host {
			return fmt.Errorf("--host %s and --name %s differ; an agent's name is its host's", *host, n)
		}
		n = *host
	}
	if *role == "" || n == "" {
		return errors.New("--role and --name (or --host for an agent) are required\n" + tlsUsage)
	}
	id := tlsutil.Identity{Role: tlsutil.Role(*role), Name: n}
	path, created, err := tlsutil.Issue(*dir, id, tlsutil.Options{Hosts: extra})
	if err != nil {
		return err
	}
	cert, err := tlsutil.ReadCertificate(filepath.Join(path, tlsutil.PairName(id.Role)+".crt"))
	if err != nil {
		return err
	}
	if !created {
		fmt.Printf("%s already has a certificate in %s (serial %s); left alone\n", id, path, tlsutil.SerialString(cert))
		return nil
	}
	fmt.Printf("issued %s into %s (serial %s; revoke it with 'ferryctl cert revoke %s')\n", id, path, tlsutil.SerialString(cert), tlsutil.SerialString(cert))
	return nil
}
