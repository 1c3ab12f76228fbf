package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) membersCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "members",
		Short: "Coordinator cluster membership: nodes, leader, Raft indexes",
		Long: `The coordinator nodes replicate the ledger with Raft. A cluster has one,
three or five voters; new nodes join by themselves when started with
--join. "add-voter" and "remove-voter" change the membership by hand, for
instance to drop a node that is gone for good.`,
	}
	cmd.AddCommand(a.membersList(), a.membersAddVoter(), a.membersRemoveVoter())
	return cmd
}

func (a *app) membersList() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the coordinator nodes and the leader",
		Long: `List the coordinator nodes with their API and Raft addresses, which one
leads, and the answering node's Raft indexes (last, commit, applied).`,
		Example: "  ferryctl members list\n  ferryctl --server 127.0.0.1:7453 members list -o json",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			resp, err := cl.Membership().ListMembers(ctx, &ferryv1.ListMembersRequest{})
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printMessage(a.io.Out, a.output, resp)
			}
			if err := a.memberTable(resp.GetMembers()); err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.io.Out, "\nleader %s at %s; answered by %s: last index %d, commit %d, applied %d\n",
				orDefault(resp.GetLeaderId(), "(none)"), orDefault(resp.GetLeaderAddress(), "-"), resp.GetNodeId(),
				resp.GetLastIndex(), resp.GetCommitIndex(), resp.GetAppliedIndex())
			return err
		}),
	}
}

func (a *app) memberTable(members []*ferryv1.Member) error {
	t := newTable(a.io.Out, "ID", "API ADDRESS", "RAFT ADDRESS", "VOTER", "LEADER")
	for _, m := range members {
		leader := ""
		if m.GetLeader() {
			leader = "*"
		}
		t.row(m.GetId(), m.GetApiAddress(), m.GetRaftAddress(), yesNo(m.GetVoter()), leader)
	}
	return t.flush()
}

func (a *app) membersAddVoter() *cobra.Command {
	req := &ferryv1.AddVoterRequest{}
	cmd := &cobra.Command{
		Use:   "add-voter --id ID --raft-address ADDR --api-address ADDR",
		Short: "Add a coordinator node as a voter",
		Long: `Add a coordinator node as a voter. A node started with --join does this by
itself; use it by hand only to repair a membership. The node must already run:
the leader first connects to --raft-address and refuses (FAILED_PRECONDITION)
an address where nothing answers, that does not present the cluster's
coordinator certificate, or that is not the node's Raft port.`,
		Example: `  ferryctl members add-voter --id c4 --raft-address 10.0.0.4:7444 --api-address 10.0.0.4:7443`,
		Args:    noArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return required(cmd, "id", "raft-address", "api-address")
		},
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			req.RequestId = requestID(req.RequestId)
			resp, err := cl.Membership().AddVoter(ctx, req)
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printMessage(a.io.Out, a.output, resp)
			}
			return a.memberTable(resp.GetMembers())
		}),
	}
	cmd.Flags().StringVar(&req.Id, "id", "", "the node's --node-id")
	cmd.Flags().StringVar(&req.RaftAddress, "raft-address", "", "the node's Raft address")
	cmd.Flags().StringVar(&req.ApiAddress, "api-address", "", "the node's API address")
	addRequestIDFlag(cmd, &req.RequestId)
	return cmd
}

func (a *app) membersRemoveVoter() *cobra.Command {
	var reqID string
	cmd := &cobra.Command{
		Use:   "remove-voter ID",
		Short: "Remove a coordinator node from the cluster",
		Long: `Remove a coordinator node from the Raft configuration, for instance one
that is gone for good. Keep a majority of the remaining voters alive. An ID
that is not a member is NOT_FOUND, but for a repeat of a removal with the
same --request-id, which answers the members.`,
		Example: `  ferryctl members remove-voter c3`,
		Args:    exactlyOneArg("the node's ID"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.Membership().RemoveVoter(ctx, &ferryv1.RemoveVoterRequest{Id: args[0], RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printMessage(a.io.Out, a.output, resp)
			}
			return a.memberTable(resp.GetMembers())
		}),
	}
	addRequestIDFlag(cmd, &reqID)
	return cmd
}
