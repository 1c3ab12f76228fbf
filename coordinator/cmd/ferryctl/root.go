package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/pkg/client"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the call failed; the message says why
	exitUsage = 2 // the command line is wrong
)

// Defaults of the global flags, and the variables that override them.
const (
	defaultServer = "127.0.0.1:7443"
	defaultTLSDir = "./ferry-data/tls"
	envServer     = "FERRY_SERVER"
	envTLSDir     = "FERRY_TLS_DIR"
)

// IO is what ferryctl reads and writes; tests run it in-process with buffers.
type IO struct {
	In       io.Reader
	Out      io.Writer
	Err      io.Writer
	Getenv   func(string) string
	Terminal bool // Out is a terminal: job watch redraws in place
	// InTerminal says In is a terminal: job create may ask to confirm.
	InTerminal bool
}

// app holds the global flags and the client the commands share.
type app struct {
	io IO

	servers      string
	tlsDir       string
	caFile       string
	certFile     string
	keyFile      string
	insecure     bool
	output       string
	linearizable bool
	maxStaleness time.Duration
	indexFile    string
	timeout      time.Duration

	cl *client.Client
}

// usageError is a mistake on the command line (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// Execute runs ferryctl with args and returns its exit code. Errors are
// printed as "ferryctl: CODE: message".
func Execute(ctx context.Context, args []string, stdio IO) int {
	if stdio.Getenv == nil {
		stdio.Getenv = func(string) string { return "" }
	}
	a := &app{io: stdio}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdio.In)
	root.SetOut(stdio.Out)
	root.SetErr(stdio.Err)
	err := root.ExecuteContext(ctx)
	if a.cl != nil {
		_ = a.cl.Close()
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stdio.Err, "ferryctl:", errorMessage(err))
	if status.Code(err) == codes.Unavailable && !grpcutil.IsNotLeader(err) {
		fmt.Fprintf(stdio.Err, "ferryctl: could not reach a coordinator at %s; check --server (or %s) and the TLS flags\n", a.servers, envServer)
	}
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		fmt.Fprintln(stdio.Err, "Run 'ferryctl --help' or add --help to the command for usage.")
		return exitUsage
	}
	return exitError
}

// errorMessage spells a gRPC status as "CODE: message", and anything else
// as it is.
func errorMessage(err error) string {
	var ue usageError
	if errors.As(err, &ue) {
		return ue.Error()
	}
	if st, ok := status.FromError(err); ok {
		return codeName(st.Code()) + ": " + st.Message()
	}
	return err.Error()
}

// codeName spells a gRPC code as the API documents it: INVALID_ARGUMENT.
func codeName(c codes.Code) string {
	s := c.String()
	if s == "OK" {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "ferryctl",
		Short: "Drive a Ferry coordinator cluster: target inventory, migration servers, sources, jobs",
		Long: `ferryctl drives every call of Ferry's ferry.v1 API.

It talks mutual TLS to a coordinator (the operator certificate client.crt
from the cluster's PKI directory) and follows the leader from any address
it is given: a node that is not the leader names it, and ferryctl goes
there. Reads are served by the node that answers, from its own copy of the
ledger, but never older than what this run of ferryctl wrote or read before
(every answer carries the Raft index it reflects, and ferryctl asks for at
least the highest it saw). --index-file keeps that index between runs, so a
script reads its own writes whichever node answers; --max-staleness refuses
a follower that has not heard from the leader for longer; --linearizable asks
for a read that reflects every write acknowledged before it, by anyone.
Reads and writes are retried with backoff, writes with the same request_id.

Output is a table by default; -o json prints the API's messages with proto
field names (the same JSON grpcurl prints and plan files use), -o yaml the
same in YAML. On error ferryctl exits non-zero with the server's message,
such as "ferryctl: INVALID_ARGUMENT: jobs[0].target.nics: ...".

Resource names are collection/id (migrationServers/abc); commands also take
the bare id (abc).`,
		Example: `  # The embedded one-node default, from the directory it runs in
  ferryctl members list

  # A three-node cluster: any member will do
  export FERRY_SERVER=10.0.0.1:7443,10.0.0.2:7443,10.0.0.3:7443
  export FERRY_TLS_DIR=/etc/ferry/tls
  ferryctl server list -o yaml
  ferryctl job watch`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	a.globalFlags(root)
	root.AddGroup(
		&cobra.Group{ID: "target", Title: "Target inventory:"},
		&cobra.Group{ID: "migration", Title: "Migration:"},
		&cobra.Group{ID: "admin", Title: "Administration:"},
	)
	for _, c := range []*cobra.Command{a.clusterCommand(), a.hostCommand(), a.storageCommand(), a.networkCommand(), a.mappingCommand()} {
		c.GroupID = "target"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{a.serverCommand(), a.sourceCommand(), a.credentialCommand(), a.jobCommand(), a.exportCommand(), a.bundleCommand()} {
		c.GroupID = "migration"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{a.settingsCommand(), a.membersCommand(), a.certCommand(), a.auditCommand()} {
		c.GroupID = "admin"
		root.AddCommand(c)
	}
	for _, c := range root.Commands() {
		if c.HasSubCommands() {
			c.Args, c.RunE = unknownSubcommand, func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
	}
	return root
}

func (a *app) globalFlags(root *cobra.Command) {
	env := a.io.Getenv
	server := env(envServer)
	if server == "" {
		server = defaultServer
	}
	tlsDir := env(envTLSDir)
	if tlsDir == "" {
		tlsDir = defaultTLSDir
	}
	f := root.PersistentFlags()
	f.StringVar(&a.servers, "server", server, "coordinator address(es), comma-separated; any member will do (env "+envServer+")")
	f.StringVar(&a.tlsDir, "tls-dir", tlsDir, "your certificate directory (ca.crt, client.crt, client.key: DIR/operator, DIR/viewers/NAME... from 'ferry-coordinator tls init/issue'), or a PKI root holding operator/ (env "+envTLSDir+")")
	f.StringVar(&a.caFile, "ca", "", "CA certificate (default: TLS_DIR/ca.crt)")
	f.StringVar(&a.certFile, "cert", "", "client certificate (default: TLS_DIR/client.crt)")
	f.StringVar(&a.keyFile, "key", "", "client key (default: TLS_DIR/client.key)")
	f.BoolVar(&a.insecure, "insecure", false, "plaintext gRPC, for a coordinator run with --insecure")
	f.StringVarP(&a.output, "output", "o", "table", "output format: table, json or yaml")
	f.BoolVar(&a.linearizable, "linearizable", false, "linearizable reads: reflect every write acknowledged before them")
	f.DurationVar(&a.maxStaleness, "max-staleness", 0, "reads from a follower only if it heard from the leader within this (else from the leader); 0: no bound")
	f.StringVar(&a.indexFile, "index-file", env(envIndexFile), "file keeping the highest Raft index ferryctl saw, so later runs read at least what earlier ones wrote (env "+envIndexFile+")")
	f.DurationVar(&a.timeout, "timeout", 30*time.Second, "bound on each call, retries included (not on job watch)")
}

// client returns the client, made on first use from the global flags.
func (a *app) client(ctx context.Context) (*client.Client, error) {
	if a.cl != nil {
		return a.cl, nil
	}
	switch a.output {
	case "table", "json", "yaml":
	default:
		return nil, usagef("-o %q: want table, json or yaml", a.output)
	}
	opts := client.Options{
		Addresses:         []string{a.servers},
		Insecure:          a.insecure,
		Timeout:           a.timeout,
		LinearizableReads: a.linearizable,
		MaxStaleness:      a.maxStaleness,
	}
	if !a.insecure {
		dir := tlsutil.ResolveDir(a.tlsDir, tlsutil.RoleClient)
		creds, err := tlsutil.ClientCredentials(
			orDefault(a.caFile, filepath.Join(dir, tlsutil.CACertFile)),
			orDefault(a.certFile, filepath.Join(dir, tlsutil.RoleClient+".crt")),
			orDefault(a.keyFile, filepath.Join(dir, tlsutil.RoleClient+".key")))
		if err != nil {
			return nil, fmt.Errorf("TLS: %w (set --tls-dir or --ca/--cert/--key, or --insecure for a plaintext coordinator)", err)
		}
		opts.Credentials = creds
	}
	cl, err := client.New(ctx, opts)
	if err != nil {
		return nil, err
	}
	if err := a.loadIndex(cl); err != nil {
		_ = cl.Close()
		return nil, err
	}
	a.cl = cl
	return cl, nil
}

func orDefault(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// run adapts a command body that needs the client to cobra's RunE.
func (a *app) run(fn func(ctx context.Context, cl *client.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cl, err := a.client(cmd.Context())
		if err != nil {
			return err
		}
		err = fn(cmd.Context(), cl, args)
		if saveErr := a.saveIndex(cl); err == nil {
			err = saveErr
		}
		return err
	}
}

// unknownSubcommand refuses what is not a subcommand of a command group.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return nil
}
