package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) storageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "storage",
		Aliases: []string{"primary-storage"},
		Short:   "Primary storage: where target disks live",
		Long: `Primary storage belongs to a target cluster and holds the migrated disks:

  local        a directory on each host (--path); the VM is defined on the
               migration server itself
  nfs          a mounted directory shared by the cluster (--path)
  ceph         an RBD pool (--ceph-pool)
  sharedblock  an LVM volume group on shared LUNs (--volume-group)`,
	}
	cmd.AddCommand(a.storageCreate(), a.storageGet(), a.storageList(), a.storageUpdate(), a.storageDelete())
	return cmd
}

func (a *app) storageCreate() *cobra.Command {
	in := &ferryv1.PrimaryStorage{}
	typ := newEnumFlag(ferryv1.PrimaryStorageType(0).Descriptor(), nil)
	var cluster, reqID string
	cmd := &cobra.Command{
		Use:   "create [ID] --cluster CLUSTER --type TYPE ...",
		Short: "Create primary storage",
		Long: `Create primary storage in a target cluster. ID (lower-case letters, digits
and '-') makes the name primaryStorages/ID; without it the coordinator picks
one. Give --path for local and nfs, --ceph-pool for ceph, --volume-group for
sharedblock.`,
		Example: `  ferryctl storage create local-1 --cluster prod --type local --path /var/lib/libvirt/images
  ferryctl storage create --cluster prod --type nfs --path /mnt/nfs/vms --display-name "NFS vms"
  ferryctl storage create rbd --cluster prod --type ceph --ceph-pool vms`,
		Args: atMostOneArg("the storage ID"),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return required(cmd, "cluster", "type")
		},
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			if len(args) == 1 {
				in.Name = resName("primaryStorages", args[0])
			}
			in.Cluster, in.Type = resName("clusters", cluster), ferryv1.PrimaryStorageType(typ.value)
			resp, err := cl.TargetInventory().CreatePrimaryStorage(ctx, &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: in, RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return storageDetails(resp) })
		}),
	}
	f := cmd.Flags()
	f.StringVar(&cluster, "cluster", "", "the target cluster it belongs to")
	addEnumFlag(f, typ, "type", "storage type")
	f.StringVar(&in.Path, "path", "", "absolute directory (local, nfs)")
	f.StringVar(&in.CephPool, "ceph-pool", "", "RBD pool (ceph)")
	f.StringVar(&in.VolumeGroup, "volume-group", "", "LVM volume group (sharedblock)")
	f.StringVar(&in.DisplayName, "display-name", "", "a name for people")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) storageGet() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show primary storage",
		Long:    `Show one primary storage by name (primaryStorages/ID or ID).`,
		Example: `  ferryctl storage get local-1`,
		Args:    exactlyOneArg("the storage's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.TargetInventory().GetPrimaryStorage(ctx, &ferryv1.GetPrimaryStorageRequest{Name: resName("primaryStorages", args[0])})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return storageDetails(resp) })
		}),
	}
}

func (a *app) storageList() *cobra.Command {
	var lf listFlags
	var cluster string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List primary storage",
		Long:    `List primary storage, optionally only that of one cluster.`,
		Example: "  ferryctl storage list\n  ferryctl storage list --cluster prod -o json",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListPrimaryStoragesResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.TargetInventory().ListPrimaryStorages(ctx, &ferryv1.ListPrimaryStoragesRequest{PageSize: lf.pageSize, PageToken: token, Cluster: resName("clusters", cluster)})
				all.PrimaryStorages, all.NextPageToken = append(all.PrimaryStorages, r.GetPrimaryStorages()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, s := range all.GetPrimaryStorages() {
				rows = append(rows, []string{s.GetName(), s.GetDisplayName(), s.GetCluster(), enumLower(s.GetType()), storageLocation(s), age(s.GetCreateTime())})
			}
			return a.showList(all, []string{"NAME", "DISPLAY NAME", "CLUSTER", "TYPE", "LOCATION", "AGE"}, rows, all.GetNextPageToken())
		}),
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only storage of this cluster")
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) storageDelete() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete primary storage",
		Long:    `Delete primary storage from the target inventory; refused while an unfinished job targets it. The disks on it are not touched.`,
		Example: `  ferryctl storage delete primaryStorages/local-1`,
		Args:    exactlyOneArg("the storage's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("primaryStorages", args[0])
			resp, err := cl.TargetInventory().DeletePrimaryStorage(ctx, &ferryv1.DeletePrimaryStorageRequest{Name: name})
			if err != nil {
				return err
			}
			return a.done(resp, "deleted "+name)
		}),
	}
}

// storageLocation is the path, pool or volume group of a storage.
func storageLocation(s *ferryv1.PrimaryStorage) string {
	switch {
	case s.GetPath() != "":
		return s.GetPath()
	case s.GetCephPool() != "":
		return "rbd:" + s.GetCephPool()
	case s.GetVolumeGroup() != "":
		return "vg:" + s.GetVolumeGroup()
	}
	return ""
}

func storageDetails(s *ferryv1.PrimaryStorage) []field {
	return []field{
		{"Name", s.GetName()},
		{"Display name", s.GetDisplayName()},
		{"Cluster", s.GetCluster()},
		{"Type", enumLower(s.GetType())},
		{"Path", s.GetPath()},
		{"Ceph pool", s.GetCephPool()},
		{"Volume group", s.GetVolumeGroup()},
		{"Description", s.GetDescription()},
		{"Created", when(s.GetCreateTime())},
		{"Updated", when(s.GetUpdateTime())},
	}
}
