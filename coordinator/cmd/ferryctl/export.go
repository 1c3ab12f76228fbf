package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/bundle"
	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) exportCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export jobs: a VM's disks and description written to a directory or share as a bundle",
		Long: `An export job copies a source VM's disks into the migration server's cache
(CONVERTING, as a migration does: the same drivers, pause and shutdown
rules, bandwidth limits and checksums), then writes a bundle to its
destination (EXPORTING): one directory named after the VM holding each
disk in the export's format (qcow2 by default, raw, vmdk streamOptimized
or vhdx) and ferry-bundle.json, the VM's description in the API's own
schema with each disk's SHA-256, signed with the cluster's Ed25519 key
('ferryctl bundle key'). The bundle is written under a hidden temporary
name and renamed once whole and verified: a failed or cancelled export
leaves nothing under its name. Export jobs are migration jobs with an
export: 'ferryctl job get/watch/cancel/restart/delete' handle them.`,
	}
	cmd.AddCommand(a.exportCreate())
	return cmd
}

func (a *app) exportCreate() *cobra.Command {
	var source, server, vm, dir, nfs, smb, user, cred, domain, bundleName, reqID string
	var compress, pause bool
	var rate int64
	format := newEnumFlag(ferryv1.ExportFormat(0).Descriptor(), nil)
	compression := newEnumFlag(ferryv1.Compression(0).Descriptor(), nil)
	cmd := &cobra.Command{
		Use:   "create --source SRC --migration-server SRV --vm VM (--dir DIR | --nfs HOST:/EXPORT | --smb //HOST/SHARE --user U --credential CRED)",
		Short: "Export one VM as a bundle",
		Long: `Export one VM of a source as a bundle in a destination of the migration
server: --dir, an absolute directory there; --nfs, an NFS export the agent
mounts for the job; --smb, an SMB share it mounts (mount.cifs) as --user
with the password of --credential (and --domain). With --nfs or --smb,
--dir is a directory inside the share. The bundle is DESTINATION/VM
unless --bundle-name says otherwise; one already there fails the job.`,
		Example: `  ferryctl export create --source kvm-src --migration-server kvm-1 --vm web-1 --dir /srv/exports
  ferryctl export create --source kvm-src --migration-server kvm-1 --vm web-1 --dir /srv/exports --format vmdk
  ferryctl export create --source vc --migration-server vmw-1 --vm vm-1042 \
      --smb //nas/exports --user ferry --credential nas-pw --dir 2024`,
		Args: noArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := required(cmd, "source", "migration-server", "vm"); err != nil {
				return err
			}
			if nfs != "" && smb != "" {
				return usagef("--nfs and --smb contradict each other; give one")
			}
			if nfs == "" && smb == "" && dir == "" {
				return usagef("give a destination: --dir, --nfs or --smb")
			}
			return nil
		},
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			d := &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY, Path: dir}
			switch {
			case nfs != "":
				d = &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_NFS, Share: nfs, Path: dir}
			case smb != "":
				d = &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_SMB, Share: smb, Path: dir,
					User: user, Credential: resName("credentials", cred), Domain: domain}
			}
			req := &ferryv1.CreateExportJobsRequest{Source: resName("sources", source), MigrationServer: resName("migrationServers", server),
				RequestId: reqID, Jobs: []*ferryv1.ExportJobSpec{{SourceVm: vm,
					Export: &ferryv1.ExportSpec{Destination: d, Format: ferryv1.ExportFormat(format.value), Compress: compress,
						BundleName: bundleName, RateLimitBytesPerSecond: rate},
					Options: &ferryv1.MigrationOptions{Compression: ferryv1.Compression(compression.value), PauseSourceVm: pause}}}}
			if req.RequestId == "" {
				req.RequestId = newRequestID()
			}
			resp, err := cl.Jobs().CreateExportJobs(ctx, req)
			if err != nil {
				return err
			}
			var rows [][]string
			for _, j := range resp.GetJobs() {
				rows = append(rows, []string{j.GetName(), j.GetSourceVm(), exportWhere(j.GetExport()), j.GetExport().GetFormat().String(), jobState(j)})
			}
			return a.showList(resp, []string{"NAME", "SOURCE VM", "BUNDLE", "FORMAT", "STATE"}, rows, "")
		}),
	}
	f := cmd.Flags()
	f.StringVar(&source, "source", "", "source of the VM")
	f.StringVar(&server, "migration-server", "", "migration server that runs the export and reaches the destination")
	f.StringVar(&vm, "vm", "", "the VM: libvirt domain name or UUID, or vCenter managed object id")
	f.StringVar(&dir, "dir", "", "absolute directory of the migration server; with --nfs or --smb, a directory inside the share")
	f.StringVar(&nfs, "nfs", "", "NFS export HOST:/EXPORT to mount")
	f.StringVar(&smb, "smb", "", "SMB share //HOST/SHARE to mount")
	f.StringVar(&user, "user", "", "SMB user")
	f.StringVar(&cred, "credential", "", "password credential of the SMB user")
	f.StringVar(&domain, "domain", "", "SMB domain (workgroup)")
	f.StringVar(&bundleName, "bundle-name", "", "the bundle's directory name (default: the VM's name)")
	f.Var(format, "format", "disk format of the bundle (default qcow2)")
	f.BoolVar(&compress, "compress", false, "compressed qcow2 clusters")
	f.Int64Var(&rate, "rate-limit", 0, "bytes per second the conversion writes at most (default: the server's upstream limit)")
	f.Var(compression, "compression", "compression of the cache image (default zstd)")
	f.BoolVar(&pause, "pause-source", false, "pause a running source VM before the copy and leave it paused")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func exportWhere(e *ferryv1.ExportSpec) string {
	d := e.GetDestination()
	where := d.GetPath()
	if d.GetShare() != "" {
		where = strings.TrimSuffix(d.GetShare(), "/") + "/" + strings.TrimPrefix(d.GetPath(), "/")
	}
	return strings.TrimSuffix(where, "/") + "/" + e.GetBundleName()
}

func (a *app) bundleCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Export bundles: verify one offline, show the cluster's signing key",
	}
	cmd.AddCommand(a.bundleVerify(), a.bundleKey())
	return cmd
}

func (a *app) bundleVerify() *cobra.Command {
	var key string
	var filesOnly bool
	cmd := &cobra.Command{
		Use:   "verify DIR",
		Short: "Check a bundle offline: its signature, then every file",
		Long: `Check a bundle without a coordinator: the Ed25519 signature of
ferry-bundle.json over its manifest, then each disk's file (length and
SHA-256) and its content as a guest reads it (SHA-256 of what
'qemu-img convert -O raw' would write, read through qemu-nbd, Debian
qemu-utils) and virtual size, then the NVRAM's. The first mismatch fails,
naming the file. With --public-key (base64, as 'ferryctl bundle key'
prints it on the exporting cluster) the bundle must be signed with that
key; without, the key the bundle carries is used, which proves it whole
but not who made it. --files-only skips reading the disks' content.`,
		Example: `  ferryctl bundle verify /srv/exports/web-1 --public-key "$(ferryctl bundle key -o json | jq -r .public_key)"`,
		Args:    exactlyOneArg("the bundle's directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var want []byte
			if key != "" {
				k, err := bundle.DecodeKey(key)
				if err != nil {
					return usagef("--public-key: %v", err)
				}
				want = k
			}
			m, sig, err := bundle.Verify(cmd.Context(), args[0], bundle.Options{PublicKey: want, FilesOnly: filesOnly})
			if err != nil {
				var be *bundle.Error
				if errors.As(err, &be) {
					return fmt.Errorf("bundle refused: %w", err)
				}
				return err
			}
			trust := "the key the bundle carries (pass --public-key to check who signed it)"
			if want != nil {
				trust = "the expected key"
			}
			fmt.Fprintf(a.io.Out, "bundle %s verified: signed by key %s, %s\n", args[0], sig.KeyID, trust)
			fmt.Fprintf(a.io.Out, "VM %s from %s (%s), exported by job %s, Ferry %s, %s\n", m.Source.VM, m.Source.Name, m.Source.Type, m.Job, m.FerryVersion, m.CreateTime)
			t := newTable(a.io.Out, "FILE", "DISK", "FORMAT", "SIZE", "SHA-256 (content)")
			for _, d := range m.Disks {
				t.row(d.File, d.SourceDisk, d.Format, fmt.Sprint(d.SizeBytes), d.SHA256)
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&key, "public-key", "", "base64 Ed25519 public key the bundle must be signed with")
	cmd.Flags().BoolVar(&filesOnly, "files-only", false, "check the files' checksums only, not their content through qemu-nbd")
	return cmd
}

func (a *app) bundleKey() *cobra.Command {
	return &cobra.Command{
		Use:   "key",
		Short: "Show the public key that signs this cluster's bundles",
		Long: `Show the public half of the cluster's Ed25519 bundle signing key (made by
the leader when it takes the lead; its private half is sealed in the
ledger as credentials are and never leaves the coordinators), to give to
'ferryctl bundle verify --public-key' and to bundle sources elsewhere.`,
		Args: noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			k, err := cl.Jobs().GetBundleSigningKey(ctx, &ferryv1.GetBundleSigningKeyRequest{})
			if err != nil {
				return err
			}
			return a.show(k, func() []field {
				return []field{{"Public key", k.GetPublicKey()}, {"Key ID", k.GetKeyId()}}
			})
		}),
	}
}
