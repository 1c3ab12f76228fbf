package main

import (
	"context"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const colMappings = "networkMappingGroups"

func (a *app) mappingCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "network-mapping",
		Aliases: []string{"nmg", "network-mapping-group"},
		Short:   "Network-mapping groups: which L3 network each source network lands on",
		Long: `A network-mapping group maps source networks (VMware portgroups, standard or
distributed, or a KVM source's libvirt networks and bridges) onto target L3
networks. "job create --network-mapping-group GROUP" puts every source NIC
on the L3 network its network maps to; the coordinator does the same for
plan files that name the group and leave NICs out. A group may be tied to
one source (portgroup names are per vCenter).`,
	}
	cmd.AddCommand(a.mappingCreate(), a.mappingGet(), a.mappingList(), a.mappingUpdate(), a.mappingDelete())
	return cmd
}

// parseMappings reads --map SOURCE_NETWORK=L3_NETWORK flags.
func parseMappings(maps []string) ([]*ferryv1.NetworkMapping, error) {
	var out []*ferryv1.NetworkMapping
	for _, m := range maps {
		src, l3, ok := strings.Cut(m, "=")
		if !ok || strings.TrimSpace(src) == "" || strings.TrimSpace(l3) == "" {
			return nil, usagef("--map %q: want SOURCE_NETWORK=L3_NETWORK, such as \"VM Network=lan\"", m)
		}
		out = append(out, &ferryv1.NetworkMapping{SourceNetwork: strings.TrimSpace(src), L3Network: resName("l3Networks", strings.TrimSpace(l3))})
	}
	return out, nil
}

func (a *app) mappingCreate() *cobra.Command {
	var maps []string
	var source, display, reqID string
	cmd := &cobra.Command{
		Use:   "create [ID] --map SOURCE_NETWORK=L3_NETWORK ... [--source SRC]",
		Short: "Create a network-mapping group",
		Long: `Create a network-mapping group. ID (lower-case letters, digits and '-') makes
the name networkMappingGroups/ID; without it the coordinator picks one.
Repeat --map for each source network; each lands on one L3 network.`,
		Example: `  ferryctl network-mapping create dc1 --source vc \
      --map "VM Network=lan" --map "DSwitch-Backup=backup"`,
		Args: atMostOneArg("the group ID"),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return required(cmd, "map")
		},
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			mappings, err := parseMappings(maps)
			if err != nil {
				return err
			}
			g := &ferryv1.NetworkMappingGroup{DisplayName: display, Source: resName("sources", source), Mappings: mappings}
			if len(args) == 1 {
				g.Name = resName(colMappings, args[0])
			}
			resp, err := cl.NetworkMappings().CreateNetworkMappingGroup(ctx, &ferryv1.CreateNetworkMappingGroupRequest{
				NetworkMappingGroup: g, RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return mappingDetails(resp) })
		}),
	}
	f := cmd.Flags()
	f.StringArrayVar(&maps, "map", nil, "SOURCE_NETWORK=L3_NETWORK; repeat per source network")
	f.StringVar(&source, "source", "", "the source whose networks these are (default: any source)")
	f.StringVar(&display, "display-name", "", "a name for people")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) mappingGet() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show a network-mapping group",
		Example: `  ferryctl network-mapping get dc1`,
		Args:    exactlyOneArg("the group's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.NetworkMappings().GetNetworkMappingGroup(ctx, &ferryv1.GetNetworkMappingGroupRequest{Name: resName(colMappings, args[0])})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return mappingDetails(resp) })
		}),
	}
}

func (a *app) mappingList() *cobra.Command {
	var lf listFlags
	var source string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List network-mapping groups",
		Long:    `List network-mapping groups; with --source, those of that source and those of any source.`,
		Example: "  ferryctl network-mapping list --source vc",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListNetworkMappingGroupsResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.NetworkMappings().ListNetworkMappingGroups(ctx, &ferryv1.ListNetworkMappingGroupsRequest{
					PageSize: lf.pageSize, PageToken: token, Source: resName("sources", source)})
				all.NetworkMappingGroups, all.NextPageToken = append(all.NetworkMappingGroups, r.GetNetworkMappingGroups()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, g := range all.GetNetworkMappingGroups() {
				rows = append(rows, []string{g.GetName(), g.GetDisplayName(), orDefault(g.GetSource(), "any"), mappingText(g), age(g.GetCreateTime())})
			}
			return a.showList(all, []string{"NAME", "DISPLAY NAME", "SOURCE", "MAPPINGS", "AGE"}, rows, all.GetNextPageToken())
		}),
	}
	cmd.Flags().StringVar(&source, "source", "", "only groups usable with this source")
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) mappingUpdate() *cobra.Command {
	var maps []string
	var display, etag string
	cmd := &cobra.Command{
		Use:   "update NAME [--map SOURCE_NETWORK=L3_NETWORK ...] [--display-name NAME]",
		Short: "Change a network-mapping group",
		Long: `Replace a group's mappings (all --map flags given become the new list) and/or
its display name. Jobs already created keep their NICs. With --etag (as 'get'
shows it) the update applies only if the group is unchanged since: otherwise
it is ABORTED.`,
		Example: `  ferryctl network-mapping update dc1 --map "VM Network=lan2"`,
		Args:    exactlyOneArg("the group's name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			g := &ferryv1.NetworkMappingGroup{Name: resName(colMappings, args[0]), DisplayName: display, Etag: etag}
			mask := &fieldmaskpb.FieldMask{}
			if cmd.Flags().Changed("map") {
				m, err := parseMappings(maps)
				if err != nil {
					return err
				}
				g.Mappings = m
				mask.Paths = append(mask.Paths, "mappings")
			}
			if cmd.Flags().Changed("display-name") {
				mask.Paths = append(mask.Paths, "display_name")
			}
			if len(mask.Paths) == 0 {
				return usageError{errNoChange}
			}
			return a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
				resp, err := cl.NetworkMappings().UpdateNetworkMappingGroup(ctx, &ferryv1.UpdateNetworkMappingGroupRequest{
					NetworkMappingGroup: g, UpdateMask: mask})
				if err != nil {
					return err
				}
				return a.show(resp, func() []field { return mappingDetails(resp) })
			})(cmd, args)
		},
	}
	cmd.Flags().StringArrayVar(&maps, "map", nil, "SOURCE_NETWORK=L3_NETWORK; repeat per source network")
	cmd.Flags().StringVar(&display, "display-name", "", "a name for people")
	cmd.Flags().StringVar(&etag, "etag", "", "update only if the group still has this etag (default: unconditional)")
	return cmd
}

func (a *app) mappingDelete() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a network-mapping group",
		Long:    `Delete a network-mapping group. Jobs made with it keep their NICs.`,
		Example: `  ferryctl network-mapping delete dc1`,
		Args:    exactlyOneArg("the group's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName(colMappings, args[0])
			resp, err := cl.NetworkMappings().DeleteNetworkMappingGroup(ctx, &ferryv1.DeleteNetworkMappingGroupRequest{Name: name})
			if err != nil {
				return err
			}
			return a.done(resp, "deleted "+name)
		}),
	}
}

func mappingText(g *ferryv1.NetworkMappingGroup) string {
	parts := make([]string, 0, len(g.GetMappings()))
	for _, m := range g.GetMappings() {
		parts = append(parts, m.GetSourceNetwork()+"→"+strings.TrimPrefix(m.GetL3Network(), "l3Networks/"))
	}
	return strings.Join(parts, ", ")
}

func mappingDetails(g *ferryv1.NetworkMappingGroup) []field {
	out := []field{
		{"Name", g.GetName()},
		{"Display name", g.GetDisplayName()},
		{"Source", orDefault(g.GetSource(), "any")},
	}
	for _, m := range g.GetMappings() {
		out = append(out, field{"Maps " + m.GetSourceNetwork(), m.GetL3Network()})
	}
	return append(out, field{"Created", when(g.GetCreateTime())}, field{"Updated", when(g.GetUpdateTime())}, field{"Etag", g.GetEtag()})
}
