package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// newRequestID makes a request_id for a create or a custom method, so
// that ferryctl may send it again after a lost answer and get the first
// answer back, without the change being applied twice.
func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on supported platforms
	return "ferryctl-" + hex.EncodeToString(b[:])
}

// addRequestIDFlag registers --request-id; an empty one is generated.
func addRequestIDFlag(cmd *cobra.Command, id *string) {
	cmd.Flags().StringVar(id, "request-id", "", "idempotency key: repeating the call with it within 24 h answers without applying it again (default: generated)")
}

func requestID(id string) string {
	if id == "" {
		return newRequestID()
	}
	return id
}

func (a *app) clusterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Target clusters: KVM hosts sharing networks and primary storage",
		Long: `A target cluster is a set of KVM hosts that share L3 networks and primary
storage. Hosts join one when their agent names it; storage and networks
belong to one. The zone is a label only.

These are the clusters VMs are moved onto; the coordinator nodes are
"ferryctl members".`,
	}
	cmd.AddCommand(a.clusterCreate(), a.clusterGet(), a.clusterList(), a.clusterUpdate(), a.clusterDelete())
	return cmd
}

func (a *app) clusterCreate() *cobra.Command {
	in := &ferryv1.Cluster{}
	var reqID string
	cmd := &cobra.Command{
		Use:   "create [ID]",
		Short: "Create a target cluster",
		Long: `Create a target cluster. ID (lower-case letters, digits and '-') makes the
name clusters/ID; without it the coordinator picks one.`,
		Example: `  ferryctl cluster create prod --display-name "Production" --zone dc1
  ferryctl cluster create --display-name lab -o json`,
		Args: atMostOneArg("the cluster ID"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			if len(args) == 1 {
				in.Name = resName("clusters", args[0])
			}
			resp, err := cl.TargetInventory().CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: in, RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return clusterDetails(resp) })
		}),
	}
	cmd.Flags().StringVar(&in.DisplayName, "display-name", "", "a name for people")
	cmd.Flags().StringVar(&in.Zone, "zone", "", "a zone label")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) clusterGet() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show a target cluster",
		Long:    `Show one target cluster by name (clusters/ID or ID).`,
		Example: `  ferryctl cluster get prod`,
		Args:    exactlyOneArg("the cluster's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.TargetInventory().GetCluster(ctx, &ferryv1.GetClusterRequest{Name: resName("clusters", args[0])})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return clusterDetails(resp) })
		}),
	}
}

func (a *app) clusterList() *cobra.Command {
	var lf listFlags
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List target clusters",
		Long:    `List the target clusters, every page unless --page-size is given.`,
		Example: "  ferryctl cluster list\n  ferryctl cluster list -o json",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListClustersResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.TargetInventory().ListClusters(ctx, &ferryv1.ListClustersRequest{PageSize: lf.pageSize, PageToken: token})
				all.Clusters, all.NextPageToken = append(all.Clusters, r.GetClusters()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, c := range all.GetClusters() {
				rows = append(rows, []string{c.GetName(), c.GetDisplayName(), c.GetZone(), age(c.GetCreateTime())})
			}
			return a.showList(all, []string{"NAME", "DISPLAY NAME", "ZONE", "AGE"}, rows, all.GetNextPageToken())
		}),
	}
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) clusterDelete() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a target cluster",
		Long:    `Delete a target cluster. The coordinator refuses while primary storage or L3 networks still belong to it.`,
		Example: `  ferryctl cluster delete clusters/prod`,
		Args:    exactlyOneArg("the cluster's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("clusters", args[0])
			resp, err := cl.TargetInventory().DeleteCluster(ctx, &ferryv1.DeleteClusterRequest{Name: name})
			if err != nil {
				return err
			}
			return a.done(resp, "deleted "+name)
		}),
	}
}

func clusterDetails(c *ferryv1.Cluster) []field {
	return []field{
		{"Name", c.GetName()},
		{"Display name", c.GetDisplayName()},
		{"Zone", c.GetZone()},
		{"Description", c.GetDescription()},
		{"Created", when(c.GetCreateTime())},
		{"Updated", when(c.GetUpdateTime())},
	}
}
