package main

import (
	"context"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// The "update" commands change only what their flags name: each flag
// given adds its field to the request's update mask, and a flag given as
// "" clears the field. With --etag (as "get -o json" shows it) the update
// applies only if the resource is unchanged since; otherwise it is
// ABORTED and nothing changes.

// maskOf returns the update mask of the flags the command line gave, each
// flag naming its field path.
func maskOf(cmd *cobra.Command, paths [][2]string) (*fieldmaskpb.FieldMask, error) {
	m := &fieldmaskpb.FieldMask{}
	for _, fp := range paths {
		if cmd.Flags().Changed(fp[0]) {
			m.Paths = append(m.Paths, fp[1])
		}
	}
	if len(m.Paths) == 0 {
		return nil, usageError{errNoChange}
	}
	return m, nil
}

const updateLong = `
Only the fields of the flags given change; a flag given as "" clears its
field. With --etag (as 'get -o json' shows it) the update applies only if
nothing changed since it was read; otherwise it is ABORTED.`

func addLabelFlags(cmd *cobra.Command, display, description, etag *string) {
	cmd.Flags().StringVar(display, "display-name", "", "a name for people")
	cmd.Flags().StringVar(description, "description", "", "free text, at most 1024 bytes")
	cmd.Flags().StringVar(etag, "etag", "", "update only if the resource still has this etag (default: unconditional)")
}

var labelPaths = [][2]string{{"display-name", "display_name"}, {"description", "description"}}

func (a *app) serverUpdate() *cobra.Command {
	var ms ferryv1.MigrationServer
	cmd := &cobra.Command{
		Use:   "update NAME [--display-name NAME] [--description TEXT] [--upstream RATE] [--downstream RATE]",
		Short: "Change a migration server's names or bandwidth limits",
		Long: `Change a migration server's display name, description or bandwidth limits
(as 'server bandwidth' does: running jobs feel a new limit within seconds;
"" is unlimited).` + updateLong,
		Example: `  ferryctl server update kvm-1 --description "rack 4, 25G uplink" --upstream 2Gbps`,
		Args:    exactlyOneArg("the server's name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			mask, err := maskOf(cmd, append(labelPaths, [2]string{"upstream", "upstream_bandwidth"}, [2]string{"downstream", "downstream_bandwidth"},
				[2]string{"virtio-win-iso", "virtio_win_iso"}))
			if err != nil {
				return err
			}
			ms.Name = resName("migrationServers", args[0])
			return a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
				resp, err := cl.MigrationServers().UpdateMigrationServer(ctx, &ferryv1.UpdateMigrationServerRequest{MigrationServer: &ms, UpdateMask: mask})
				if err != nil {
					return err
				}
				return a.show(resp, func() []field { return serverDetails(resp) })
			})(cmd, args)
		},
	}
	addLabelFlags(cmd, &ms.DisplayName, &ms.Description, &ms.Etag)
	cmd.Flags().StringVar(&ms.UpstreamBandwidth, "upstream", "", `limit toward primary storage, e.g. 500Mbps ("" = unlimited)`)
	cmd.Flags().StringVar(&ms.DownstreamBandwidth, "downstream", "", `limit from sources, e.g. 1Gbps ("" = unlimited)`)
	cmd.Flags().StringVar(&ms.VirtioWinIso, "virtio-win-iso", "", `the virtio-win ISO on the server's host, for Windows guest conversion ("" = none)`)
	return cmd
}

func (a *app) sourceUpdate() *cobra.Command {
	sf := &sourceFlags{}
	var etag string
	cmd := &cobra.Command{
		Use:   "update NAME [--address ADDR] [--port N] [--user USER] [--credential CRED] ...",
		Short: "Change a source's connection: address, port, user, credential, TLS or host key",
		Long: `Change how Ferry reaches a source. Running jobs keep the connection they
started with; the next attempt and the next sync use the new one. A KVM
source given a new address, port or pinned host key forgets the host key it
recorded on first use. To rotate a password, update the credential instead
('credential update').` + updateLong,
		Example: `  ferryctl source update kvm-src --address 192.0.2.21 --host-key-file new_host_key.pub
  ferryctl source update vc --credential vc-pass-2026`,
		Args: exactlyOneArg("the source's name"),
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("sources", args[0])
			old, err := cl.Sources().GetSource(ctx, &ferryv1.GetSourceRequest{Name: name})
			if err != nil {
				return err
			}
			kvm := old.GetType() == ferryv1.Platform_PLATFORM_KVM
			prefix := "vcenter."
			if kvm {
				prefix = "kvm."
			}
			conn := [][2]string{{"address", "address"}, {"user", "user"}, {"credential", "credential"}}
			if kvm {
				conn = append(conn, [2]string{"port", "ssh_port"}, [2]string{"sasl-user", "sasl_user"},
					[2]string{"sasl-credential", "sasl_credential"}, [2]string{"host-key", "host_key"}, [2]string{"host-key-file", "host_key"})
			} else {
				conn = append(conn, [2]string{"port", "port"}, [2]string{"use-http", "use_http"}, [2]string{"ca-file", "ca_certificate"},
					[2]string{"thumbprint", "thumbprint"}, [2]string{"skip-hostname-check", "skip_hostname_check"})
			}
			paths := [][2]string{{"display-name", "display_name"}}
			for _, c := range conn {
				paths = append(paths, [2]string{c[0], prefix + c[1]})
			}
			sf.typ = &enumFlag{value: old.GetType().Number()}
			src, err := sf.source() // refuses the other type's flags
			if err != nil {
				return err
			}
			mask, err := maskOf(cmd, paths)
			if err != nil {
				return err
			}
			src.Name, src.Etag = name, etag
			resp, err := cl.Sources().UpdateSource(ctx, &ferryv1.UpdateSourceRequest{Source: src, UpdateMask: mask})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return sourceDetails(resp) })
		})(cmd, args)
	}
	f := cmd.Flags()
	f.StringVar(&sf.address, "address", "", "host name or address")
	f.Int32Var(&sf.port, "port", 0, "HTTPS port (vcenter) or SSH port (kvm); 0 = the default")
	f.StringVar(&sf.user, "user", "", "user")
	f.StringVar(&sf.credential, "credential", "", "credential with the password or private key")
	f.StringVar(&sf.saslUser, "sasl-user", "", "libvirt SASL user (kvm)")
	f.StringVar(&sf.saslCredential, "sasl-credential", "", "credential with the SASL password (kvm)")
	f.StringVar(&sf.hostKey, "host-key", "", `pinned SSH host key, authorized_keys form (kvm; "" = trust on first use again)`)
	f.StringVar(&sf.hostKeyFile, "host-key-file", "", "read the pinned SSH host key from a .pub file (kvm)")
	f.BoolVar(&sf.useHTTP, "use-http", false, "plain HTTP instead of HTTPS (vcenter)")
	f.StringVar(&sf.caFile, "ca-file", "", "PEM CA bundle that verifies the vCenter (vcenter)")
	f.StringVar(&sf.thumbprint, "thumbprint", "", "pinned thumbprint of the vCenter's certificate (vcenter)")
	f.BoolVar(&sf.skipHostnameCheck, "skip-hostname-check", false, "accept a certificate whose names do not match the address (vcenter)")
	f.StringVar(&sf.display, "display-name", "", "a name for people")
	f.StringVar(&etag, "etag", "", "update only if the source still has this etag (default: unconditional)")
	return cmd
}

func (a *app) credentialUpdate() *cobra.Command {
	var sf secretFlags
	var display, etag string
	cmd := &cobra.Command{
		Use:   "update NAME [--password-stdin | --private-key-file FILE | --secret-env VAR] [--display-name NAME]",
		Short: "Rotate a credential's secret or rename it",
		Long: `Rotate a credential: the new secret comes from one of --password-stdin,
--private-key-file or --secret-env, as in 'credential create'; the type
stays. Running jobs keep the secret they started with; the next attempt and
the next sync use the new one. The secret is sealed at once and never shown.` + updateLong,
		Example: `  printf '%s' "$NEW_PASS" | ferryctl credential update kvm-pass --password-stdin`,
		Args:    exactlyOneArg("the credential's name"),
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			in := &ferryv1.Credential{Name: resName("credentials", args[0]), DisplayName: display, Etag: etag}
			mask := &fieldmaskpb.FieldMask{}
			if cmd.Flags().Changed("display-name") {
				mask.Paths = append(mask.Paths, "display_name")
			}
			if sf.passwordStdin || sf.privateKeyFile != "" || sf.secretEnv != "" {
				secret, _, err := a.readSecret(sf)
				if err != nil {
					return err
				}
				in.Secret = secret
				mask.Paths = append(mask.Paths, "secret")
			}
			if len(mask.Paths) == 0 {
				return usageError{errNoChange}
			}
			resp, err := cl.Sources().UpdateCredential(ctx, &ferryv1.UpdateCredentialRequest{Credential: in, UpdateMask: mask})
			if err != nil {
				return err
			}
			resp.Secret = "" // never echoed, whatever a server sends
			return a.show(resp, func() []field { return credentialDetails(resp) })
		})(cmd, args)
	}
	f := cmd.Flags()
	f.BoolVar(&sf.passwordStdin, "password-stdin", false, "read the new secret from standard input")
	f.StringVar(&sf.privateKeyFile, "private-key-file", "", "read the new SSH private key from FILE")
	f.StringVar(&sf.secretEnv, "secret-env", "", "read the new secret from environment variable VAR")
	f.StringVar(&display, "display-name", "", "a name for people")
	f.StringVar(&etag, "etag", "", "update only if the credential still has this etag (default: unconditional)")
	return cmd
}

// labelUpdate is an update command of a resource whose labels only are
// editable (clusters, primary storage), or whose other flags extra adds.
func labelUpdate[T proto.Message](a *app, noun, collection, example string, extra func(*cobra.Command, T) [][2]string,
	newRes func(name, display, description, etag string) T,
	call func(context.Context, *client.Client, T, *fieldmaskpb.FieldMask) (T, error), details func(T) []field) *cobra.Command {
	var display, description, etag string
	res := newRes("", "", "", "")
	cmd := &cobra.Command{
		Use:     "update NAME [--display-name NAME] [--description TEXT]",
		Short:   "Change a " + noun + "'s display name or description",
		Long:    "Change a " + noun + "'s display name or description." + updateLong,
		Example: example,
		Args:    exactlyOneArg("the " + noun + "'s name"),
	}
	paths := labelPaths
	if extra != nil {
		paths = append(paths, extra(cmd, res)...)
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		mask, err := maskOf(cmd, paths)
		if err != nil {
			return err
		}
		in := newRes(resName(collection, args[0]), display, description, etag)
		proto.Merge(in, res) // the extra flags' values
		return a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			resp, err := call(ctx, cl, in, mask)
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return details(resp) })
		})(cmd, args)
	}
	addLabelFlags(cmd, &display, &description, &etag)
	return cmd
}

func (a *app) clusterUpdate() *cobra.Command {
	return labelUpdate(a, "cluster", "clusters", `  ferryctl cluster update c1 --zone zone-b --description "hall 2"`,
		func(cmd *cobra.Command, c *ferryv1.Cluster) [][2]string {
			cmd.Flags().StringVar(&c.Zone, "zone", "", "a zone label")
			cmd.Use = "update NAME [--display-name NAME] [--description TEXT] [--zone ZONE]"
			return [][2]string{{"zone", "zone"}}
		},
		func(name, display, description, etag string) *ferryv1.Cluster {
			return &ferryv1.Cluster{Name: name, DisplayName: display, Description: description, Etag: etag}
		},
		func(ctx context.Context, cl *client.Client, c *ferryv1.Cluster, m *fieldmaskpb.FieldMask) (*ferryv1.Cluster, error) {
			return cl.TargetInventory().UpdateCluster(ctx, &ferryv1.UpdateClusterRequest{Cluster: c, UpdateMask: m})
		}, clusterDetails)
}

func (a *app) storageUpdate() *cobra.Command {
	return labelUpdate(a, "primary storage", "primaryStorages", `  ferryctl storage update nfs-1 --description "filer 2, export /vol/vms"`, nil,
		func(name, display, description, etag string) *ferryv1.PrimaryStorage {
			return &ferryv1.PrimaryStorage{Name: name, DisplayName: display, Description: description, Etag: etag}
		},
		func(ctx context.Context, cl *client.Client, ps *ferryv1.PrimaryStorage, m *fieldmaskpb.FieldMask) (*ferryv1.PrimaryStorage, error) {
			return cl.TargetInventory().UpdatePrimaryStorage(ctx, &ferryv1.UpdatePrimaryStorageRequest{PrimaryStorage: ps, UpdateMask: m})
		}, storageDetails)
}

func (a *app) networkUpdate() *cobra.Command {
	cmd := labelUpdate(a, "L3 network", "l3Networks", `  # Widen the allocation range
  ferryctl network update lan --range-end 10.0.0.250`,
		func(cmd *cobra.Command, n *ferryv1.L3Network) [][2]string {
			cmd.Flags().StringVar(&n.IpRangeStart, "range-start", "", "first address of the allocation range")
			cmd.Flags().StringVar(&n.IpRangeEnd, "range-end", "", "last address of the allocation range")
			cmd.Flags().StringVar(&n.Gateway, "gateway", "", `gateway address ("" = none)`)
			cmd.Flags().StringSliceVar(&n.DnsServers, "dns", nil, `DNS servers, comma-separated, at most 3 ("" = none)`)
			cmd.Use = "update NAME [--range-start IP] [--range-end IP] [--gateway IP] [--dns IP,...] [--display-name NAME] [--description TEXT]"
			return [][2]string{{"range-start", "ip_range_start"}, {"range-end", "ip_range_end"}, {"gateway", "gateway"}, {"dns", "dns_servers"}}
		},
		func(name, display, description, etag string) *ferryv1.L3Network {
			return &ferryv1.L3Network{Name: name, DisplayName: display, Description: description, Etag: etag}
		},
		func(ctx context.Context, cl *client.Client, n *ferryv1.L3Network, m *fieldmaskpb.FieldMask) (*ferryv1.L3Network, error) {
			return cl.TargetInventory().UpdateL3Network(ctx, &ferryv1.UpdateL3NetworkRequest{L3Network: n, UpdateMask: m})
		}, networkDetails)
	cmd.Short = "Change an L3 network's allocation range, gateway or labels"
	cmd.Long = `Change an L3 network's allocation range, gateway, display name or
description. The range may move or shrink only as far as it still holds
every address a job or a reservation holds; the network's prefix and
attachment stay as created.` + updateLong
	return cmd
}

func (a *app) jobUpdate() *cobra.Command {
	return labelUpdate(a, "migration job", "migrationJobs", `  ferryctl job update 0f3a --display-name "wave 2: db" --description "after the app tier"`, nil,
		func(name, display, description, etag string) *ferryv1.MigrationJob {
			return &ferryv1.MigrationJob{Name: name, DisplayName: display, Description: description, Etag: etag}
		},
		func(ctx context.Context, cl *client.Client, j *ferryv1.MigrationJob, m *fieldmaskpb.FieldMask) (*ferryv1.MigrationJob, error) {
			return cl.Jobs().UpdateMigrationJob(ctx, &ferryv1.UpdateMigrationJobRequest{MigrationJob: j, UpdateMask: m})
		}, jobDetails)
}
