package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) sourceCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "source",
		Short: "Sources: connection profiles of vCenters and KVM hosts",
		Long: `A source is how a migration server reaches the hypervisor VMs leave from:

  vcenter  a vCenter or ESXi host: address, port (443), user and a password
           credential, HTTPS verified with the system CAs, a CA bundle or a
           pinned SHA-1/SHA-256 certificate thumbprint (or plain HTTP);
           --skip-hostname-check accepts a certificate whose names do not
           match the address, still checking its chain or thumbprint
  kvm      a KVM host over SSH: address, SSH port (22), user (root), a
           password or private-key credential, optional libvirt SASL user
           and credential, and a pinned SSH host key (recorded on first use
           when not given)

Secrets live in credentials ("ferryctl credential create"); a source names
them. "source vms" lists a source's VMs through a migration server's agent:
what a job's source_vm, disks and NICs are taken from.`,
	}
	cmd.AddCommand(a.sourceCreate(), a.sourceGet(), a.sourceList(), a.sourceUpdate(), a.sourceDelete(), a.sourceVMs(), a.sourceSync(), a.sourceInventory())
	return cmd
}

// sourceFlags are the flags of "source create".
type sourceFlags struct {
	typ                         *enumFlag
	address, user, credential   string
	port                        int32
	saslUser, saslCredential    string
	hostKey, hostKeyFile        string
	useHTTP, skipHostnameCheck  bool
	caFile, thumbprint, display string
	reqID                       string
	bundlePath, publicKey       string
}

func (a *app) sourceCreate() *cobra.Command {
	sf := &sourceFlags{typ: newEnumFlag(ferryv1.Platform(0).Descriptor(), map[string]string{"vcenter": "vmware", "esxi": "vmware"})}
	cmd := &cobra.Command{
		Use:   "create [ID] --type kvm|vcenter --address ADDR --credential CRED ... | --type bundle --bundle-path DIR",
		Short: "Create a source",
		Long: `Create a source: a vCenter/ESXi (--type vcenter), a KVM host (--type kvm),
or a directory of export bundles on the migration servers (--type bundle
--bundle-path DIR [--public-key KEY]), whose VMs are the bundles found
there ('ferryctl export create' writes them), migrated as any source's;
with --public-key (base64, 'ferryctl bundle key' on the exporting cluster)
only bundles signed with that key are taken.
ID (lower-case letters, digits and '-') makes the name sources/ID; without
it the coordinator picks one. --port is the HTTPS port of a vCenter or the
SSH port of a KVM host.`,
		Example: `  # A KVM host over SSH with a private key, host key pinned
  ferryctl credential create kvm-key --private-key-file ~/.ssh/id_ed25519
  ferryctl source create kvm-src --type kvm --address 192.0.2.20 --user root \
      --credential kvm-key --host-key-file /etc/ssh/ssh_host_ed25519_key.pub

  # A vCenter verified by its CA
  ferryctl credential create vc-pass --password-stdin < vc.pass
  ferryctl source create vc --type vcenter --address vc.example.net \
      --user administrator@vsphere.local --credential vc-pass --ca-file vc-ca.pem`,
		Args: atMostOneArg("the source ID"),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if sf.typ.value == protoreflect.EnumNumber(ferryv1.Platform_PLATFORM_BUNDLE) {
				return required(cmd, "type", "bundle-path")
			}
			return required(cmd, "type", "address")
		},
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			src, err := sf.source()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				src.Name = resName("sources", args[0])
			}
			resp, err := cl.Sources().CreateSource(ctx, &ferryv1.CreateSourceRequest{Source: src, RequestId: requestID(sf.reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return sourceDetails(resp) })
		}),
	}
	f := cmd.Flags()
	addEnumFlag(f, sf.typ, "type", "kvm, or vcenter (vmware)")
	f.StringVar(&sf.address, "address", "", "host name or address")
	f.Int32Var(&sf.port, "port", 0, "HTTPS port (vcenter, default 443) or SSH port (kvm, default 22)")
	f.StringVar(&sf.user, "user", "", "user (kvm default root)")
	f.StringVar(&sf.credential, "credential", "", "credential with the password or private key")
	f.StringVar(&sf.saslUser, "sasl-user", "", "libvirt SASL user (kvm)")
	f.StringVar(&sf.saslCredential, "sasl-credential", "", "credential with the SASL password (kvm)")
	f.StringVar(&sf.hostKey, "host-key", "", `pinned SSH host key, authorized_keys form "ssh-ed25519 AAAA..." (kvm)`)
	f.StringVar(&sf.hostKeyFile, "host-key-file", "", "read the pinned SSH host key from a .pub file (kvm)")
	f.BoolVar(&sf.useHTTP, "use-http", false, "plain HTTP instead of HTTPS (vcenter)")
	f.StringVar(&sf.caFile, "ca-file", "", "PEM CA bundle that verifies the vCenter (vcenter)")
	f.StringVar(&sf.thumbprint, "thumbprint", "", "pinned SHA-1 or SHA-256 thumbprint of the vCenter's certificate, colons optional (vcenter)")
	f.BoolVar(&sf.skipHostnameCheck, "skip-hostname-check", false,
		"accept a certificate whose names do not match --address; its chain or thumbprint is still checked (vcenter)")
	f.StringVar(&sf.display, "display-name", "", "a name for people")
	f.StringVar(&sf.bundlePath, "bundle-path", "", "absolute directory of export bundles on the migration servers (bundle)")
	f.StringVar(&sf.publicKey, "public-key", "", "base64 Ed25519 key the bundles must be signed with (bundle)")
	addRequestIDFlag(cmd, &sf.reqID)
	return cmd
}

// source builds the Source the flags describe, refusing flags of the
// other type.
func (sf *sourceFlags) source() (*ferryv1.Source, error) {
	typ := ferryv1.Platform(sf.typ.value)
	src := &ferryv1.Source{DisplayName: sf.display, Type: typ}
	if typ == ferryv1.Platform_PLATFORM_BUNDLE {
		if sf.address != "" || sf.credential != "" || sf.user != "" {
			return nil, usagef("--address, --user and --credential are not for --type bundle")
		}
		src.Bundle = &ferryv1.BundleLocation{Path: sf.bundlePath, PublicKey: sf.publicKey}
		return src, nil
	}
	if sf.bundlePath != "" || sf.publicKey != "" {
		return nil, usagef("--bundle-path and --public-key are for --type bundle")
	}
	if typ == ferryv1.Platform_PLATFORM_KVM {
		if sf.useHTTP || sf.caFile != "" || sf.thumbprint != "" || sf.skipHostnameCheck {
			return nil, usagef("--use-http, --ca-file, --thumbprint and --skip-hostname-check are for --type vcenter")
		}
		hostKey := sf.hostKey
		if sf.hostKeyFile != "" {
			b, err := os.ReadFile(sf.hostKeyFile)
			if err != nil {
				return nil, fmt.Errorf("--host-key-file: %w", err)
			}
			hostKey = strings.TrimSpace(string(b))
		}
		src.Kvm = &ferryv1.KvmConnection{
			Address: sf.address, SshPort: sf.port, User: sf.user, Credential: resName("credentials", sf.credential),
			SaslUser: sf.saslUser, SaslCredential: resName("credentials", sf.saslCredential), HostKey: hostKey,
		}
		return src, nil
	}
	if sf.saslUser != "" || sf.saslCredential != "" || sf.hostKey != "" || sf.hostKeyFile != "" {
		return nil, usagef("--sasl-user, --sasl-credential, --host-key and --host-key-file are for --type kvm")
	}
	var ca string
	if sf.caFile != "" {
		b, err := os.ReadFile(sf.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		ca = string(b)
	}
	src.Vcenter = &ferryv1.VCenterConnection{
		Address: sf.address, Port: sf.port, User: sf.user, Credential: resName("credentials", sf.credential),
		UseHttp: sf.useHTTP, CaCertificate: ca, Thumbprint: sf.thumbprint, SkipHostnameCheck: sf.skipHostnameCheck,
	}
	return src, nil
}

func (a *app) sourceGet() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show a source",
		Long:    `Show one source by name (sources/ID or ID), with the SSH host key it recorded on first use.`,
		Example: `  ferryctl source get kvm-src`,
		Args:    exactlyOneArg("the source's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.Sources().GetSource(ctx, &ferryv1.GetSourceRequest{Name: resName("sources", args[0])})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return sourceDetails(resp) })
		}),
	}
}

func (a *app) sourceList() *cobra.Command {
	var lf listFlags
	typ := newEnumFlag(ferryv1.Platform(0).Descriptor(), map[string]string{"vcenter": "vmware"})
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List sources",
		Long:    `List sources, optionally only those of one type.`,
		Example: "  ferryctl source list\n  ferryctl source list --type kvm -o json",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListSourcesResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.Sources().ListSources(ctx, &ferryv1.ListSourcesRequest{PageSize: lf.pageSize, PageToken: token, Type: ferryv1.Platform(typ.value)})
				all.Sources, all.NextPageToken = append(all.Sources, r.GetSources()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, s := range all.GetSources() {
				addr, user, cred := sourceEndpoint(s)
				rows = append(rows, []string{s.GetName(), s.GetDisplayName(), sourceType(s.GetType()), addr, user, cred, age(s.GetCreateTime())})
			}
			headers := []string{"NAME", "DISPLAY NAME", "TYPE", "ADDRESS", "USER", "CREDENTIAL", "AGE"}
			return a.showList(all, headers, rows, all.GetNextPageToken())
		}),
	}
	addEnumFlag(cmd.Flags(), typ, "type", "only sources of this type")
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) sourceDelete() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a source",
		Long:    `Delete a source; refused while an unfinished job reads from it. Its credentials stay; delete them with "ferryctl credential delete".`,
		Example: `  ferryctl source delete sources/kvm-src`,
		Args:    exactlyOneArg("the source's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("sources", args[0])
			resp, err := cl.Sources().DeleteSource(ctx, &ferryv1.DeleteSourceRequest{Name: name})
			if err != nil {
				return err
			}
			return a.done(resp, "deleted "+name)
		}),
	}
}

// sourceType spells a source's platform as the flags do: kvm or vcenter.
func sourceType(p ferryv1.Platform) string {
	if p == ferryv1.Platform_PLATFORM_VMWARE {
		return "vcenter"
	}
	return enumLower(p)
}

// sourceEndpoint returns the address:port, user and credential of a source.
func sourceEndpoint(s *ferryv1.Source) (addr, user, cred string) {
	if k := s.GetKvm(); k != nil {
		return hostPort(k.GetAddress(), k.GetSshPort()), k.GetUser(), k.GetCredential()
	}
	if b := s.GetBundle(); b != nil {
		return b.GetPath(), "", ""
	}
	v := s.GetVcenter()
	return hostPort(v.GetAddress(), v.GetPort()), v.GetUser(), v.GetCredential()
}

func hostPort(host string, port int32) string {
	if port == 0 || host == "" {
		return host
	}
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

func sourceDetails(s *ferryv1.Source) []field {
	addr, user, cred := sourceEndpoint(s)
	out := []field{
		{"Name", s.GetName()},
		{"Display name", s.GetDisplayName()},
		{"Type", sourceType(s.GetType())},
		{"Address", addr},
		{"User", user},
		{"Credential", cred},
	}
	if k := s.GetKvm(); k != nil {
		out = append(out, field{"SASL user", k.GetSaslUser()}, field{"SASL credential", k.GetSaslCredential()},
			field{"Host key", k.GetHostKey()}, field{"Observed host key", k.GetObservedHostKey()})
	}
	if b := s.GetBundle(); b != nil {
		key := b.GetPublicKey()
		if key == "" {
			key = "any (the key each bundle carries)"
		}
		out = append(out, field{"Signed by", key})
	}
	if v := s.GetVcenter(); v != nil {
		verify := "CA certificate"
		switch {
		case v.GetUseHttp():
			verify = "plain HTTP"
		case v.GetThumbprint() != "":
			verify = "thumbprint " + v.GetThumbprint()
		case v.GetCaCertificate() == "":
			verify = "system CAs"
		}
		if v.GetSkipHostnameCheck() {
			verify += ", hostname not checked"
		}
		out = append(out, field{"Verified by", verify})
	}
	out = append(out, field{"Created", when(s.GetCreateTime())}, field{"Last sync", when(s.GetLastSyncTime())})
	if p := s.GetProduct(); p != nil {
		out = append(out, field{"Product", p.GetFullName()}, field{"Version", p.GetVersion() + " (API " + p.GetApiVersion() + ")"})
	}
	for _, c := range s.GetCapabilities() {
		v := "yes, as " + c.GetVia()
		if !c.GetAvailable() {
			v = "no: missing " + c.GetMissing()
		}
		out = append(out, field{capabilityNames[c.GetKind()], v})
	}
	if e := s.GetLastSyncError(); e != "" {
		out = append(out, field{"Last sync error", e})
	}
	return out
}

// capabilityNames are the headings of a source's capabilities.
var capabilityNames = map[ferryv1.SourceCapabilityKind]string{
	ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIST_VMS:      "List VMs",
	ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIVE_COPY:     "Live copy",
	ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_OLD_HOST_COPY: "Old-host copy",
}

func (a *app) sourceVMs() *cobra.Command {
	var server string
	var req ferryv1.ListSourceVMsRequest
	var templates string
	state := newEnumFlag(ferryv1.SourceVmState(0).Descriptor(), nil)
	cmd := &cobra.Command{
		Use:   "vms SOURCE",
		Short: "List a source's VMs from its synced inventory",
		Long: `List the VMs of a source as its last inventory sync found them (the ledger
holds them; no agent is needed). With --refresh, or when the source was never
synced, the leader first has the agent of a migration server of the source's
type (--migration-server, or any enabled and connected one) sync it. The ID
column is what a job's source_vm names; the disks (target device and virtual
size) and NIC MACs are what a job's --disk and --nic refer to.`,
		Example: `  ferryctl source vms kvm-src
  ferryctl source vms vc --refresh --host esx-01 --state running
  ferryctl source vms vc --name web --templates only -o yaml`,
		Args: exactlyOneArg("the source's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			req.Source, req.MigrationServer = resName("sources", args[0]), resName("migrationServers", server)
			req.State = ferryv1.SourceVmState(state.value)
			switch templates {
			case "only":
				req.Template = proto.Bool(true)
			case "no":
				req.Template = proto.Bool(false)
			case "", "yes":
			default:
				return fmt.Errorf("--templates: want yes, no or only, got %q", templates)
			}
			vms, err := listAllSourceVMs(ctx, cl, &req)
			if err != nil {
				return err
			}
			var rows [][]string
			for _, vm := range vms {
				rows = append(rows, sourceVMRow(vm))
			}
			headers := []string{"ID", "NAME", "STATE", "CPUS", "MEMORY", "FIRMWARE", "OS", "HOST", "DISKS", "NICS"}
			return a.showList(&ferryv1.ListSourceVMsResponse{Vms: vms}, headers, rows, "")
		}),
	}
	f := cmd.Flags()
	f.StringVar(&server, "migration-server", "", "the migration server whose agent syncs the source (default: any of the source's type)")
	f.BoolVar(&req.Refresh, "refresh", false, "sync the source first")
	f.StringVar(&req.NameContains, "name", "", "only VMs whose name contains this (case-insensitive)")
	f.StringVar(&req.Datacenter, "datacenter", "", "only VMs of this datacenter")
	f.StringVar(&req.Cluster, "cluster", "", "only VMs of this source cluster")
	f.StringVar(&req.Host, "host", "", "only VMs on this source host")
	f.StringVar(&templates, "templates", "yes", "list templates too (yes), leave them out (no), or list only them (only)")
	addEnumFlag(f, state, "state", "only VMs in this state")
	return cmd
}

// listAllSourceVMs reads every page; only the first may refresh.
func listAllSourceVMs(ctx context.Context, cl *client.Client, req *ferryv1.ListSourceVMsRequest) ([]*ferryv1.SourceVm, error) {
	var vms []*ferryv1.SourceVm
	for {
		resp, err := cl.Sources().ListSourceVMs(ctx, req)
		if err != nil {
			return nil, err
		}
		vms = append(vms, resp.GetVms()...)
		req.Refresh = false
		if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
			return vms, nil
		}
	}
}

func (a *app) sourceSync() *cobra.Command {
	var server, reqID string
	cmd := &cobra.Command{
		Use:   "sync SOURCE",
		Short: "Sync a source's inventory now",
		Long: `Have the agent of a migration server of the source's type (--migration-server,
or any enabled and connected one) read the source's whole inventory, and
record it. The leader also syncs every source on registration and every
inventory_sync_interval (ferryctl settings).`,
		Example: `  ferryctl source sync vc`,
		Args:    exactlyOneArg("the source's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.Sources().SyncSource(ctx, &ferryv1.SyncSourceRequest{Name: resName("sources", args[0]),
				MigrationServer: resName("migrationServers", server), RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return sourceDetails(resp.GetSource()) })
		}),
	}
	cmd.Flags().StringVar(&server, "migration-server", "", "the migration server whose agent syncs the source (default: any of the source's type)")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) sourceInventory() *cobra.Command {
	var req ferryv1.ListSourceInventoryRequest
	kind := newEnumFlag(ferryv1.SourceObjectKind(0).Descriptor(), nil)
	cmd := &cobra.Command{
		Use:   "inventory SOURCE",
		Short: "List a source's datacenters, clusters, hosts, networks and datastores",
		Long: `List the objects other than VMs of a source's synced inventory, from the
ledger: datacenters, clusters, hosts (maintenance mode, version), networks
(standard and distributed portgroups) and datastores (capacity, free).`,
		Example: `  ferryctl source inventory vc
  ferryctl source inventory vc --kind host --cluster DC0_C0
  ferryctl source inventory vc --kind network -o json`,
		Args: exactlyOneArg("the source's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			req.Source, req.Kind = resName("sources", args[0]), ferryv1.SourceObjectKind(kind.value)
			resp := &ferryv1.ListSourceInventoryResponse{}
			for {
				page, err := cl.Sources().ListSourceInventory(ctx, &req)
				if err != nil {
					return err
				}
				resp.Objects, resp.SyncTime, resp.Product = append(resp.Objects, page.GetObjects()...), page.GetSyncTime(), page.GetProduct()
				if req.PageToken = page.GetNextPageToken(); req.PageToken == "" {
					break
				}
			}
			var rows [][]string
			for _, o := range resp.GetObjects() {
				rows = append(rows, sourceObjectRow(o))
			}
			return a.showList(resp, []string{"KIND", "NAME", "ID", "DATACENTER", "CLUSTER", "DETAILS"}, rows, "")
		}),
	}
	f := cmd.Flags()
	addEnumFlag(f, kind, "kind", "only objects of this kind")
	f.StringVar(&req.NameContains, "name", "", "only objects whose name contains this (case-insensitive)")
	f.StringVar(&req.Datacenter, "datacenter", "", "only objects of this datacenter")
	f.StringVar(&req.Cluster, "cluster", "", "only objects of this cluster")
	f.StringVar(&req.Host, "host", "", "only this host")
	return cmd
}

func sourceObjectRow(o *ferryv1.SourceObject) []string {
	kind := enumShort(o.GetKind())
	switch x := o.GetObject().(type) {
	case *ferryv1.SourceObject_Datacenter:
		return []string{kind, x.Datacenter.GetName(), x.Datacenter.GetId(), x.Datacenter.GetName(), "", ""}
	case *ferryv1.SourceObject_Cluster:
		c := x.Cluster
		return []string{kind, c.GetName(), c.GetId(), c.GetDatacenter(), c.GetName(), ""}
	case *ferryv1.SourceObject_Host:
		h := x.Host
		details := fmt.Sprintf("version %s, %s, %d CPUs, %s", h.GetVersion(), orDefault(h.GetConnectionState(), "-"), h.GetCpus(), humanBytes(h.GetMemoryBytes()))
		if h.GetMaintenanceMode() {
			details += ", maintenance mode"
		}
		return []string{kind, h.GetName(), h.GetId(), h.GetDatacenter(), h.GetCluster(), details}
	case *ferryv1.SourceObject_Network:
		n := x.Network
		details := enumShort(n.GetType())
		if n.GetSwitch() != "" {
			details += " on " + n.GetSwitch()
		}
		return []string{kind, n.GetName(), n.GetId(), n.GetDatacenter(), "", details}
	case *ferryv1.SourceObject_Datastore:
		d := x.Datastore
		return []string{kind, d.GetName(), d.GetId(), d.GetDatacenter(), "",
			fmt.Sprintf("%s, %s free of %s", d.GetType(), humanBytes(d.GetFreeBytes()), humanBytes(d.GetCapacityBytes()))}
	}
	return []string{kind, "", "", "", "", ""}
}

func sourceVMRow(vm *ferryv1.SourceVm) []string {
	var disks, nics []string
	for _, d := range vm.GetDisks() {
		disks = append(disks, d.GetTarget()+"="+strings.ReplaceAll(humanBytes(d.GetCapacityBytes()), " ", ""))
	}
	for _, n := range vm.GetNics() {
		nics = append(nics, n.GetMac())
	}
	return []string{vm.GetId(), vm.GetName(), enumShort(vm.GetState()), fmt.Sprint(vm.GetCpus()), humanBytes(vm.GetMemoryBytes()),
		enumLower(vm.GetFirmware()), orDefault(vm.GetOsName(), enumLower(vm.GetOsType())), orDefault(vm.GetHost(), "-"),
		strings.Join(disks, " "), strings.Join(nics, " ")}
}
