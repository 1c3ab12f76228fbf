package api

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// nodeIDPattern is what a coordinator's node ID may be.
var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// membershipService is ferry.v1.MembershipService: the coordinators themselves.
type membershipService struct {
	ferryv1.UnimplementedMembershipServiceServer
	a *API
}

// ListMembers answers from this node's view of the configuration.
func (s *membershipService) ListMembers(ctx context.Context, req *ferryv1.ListMembersRequest) (*ferryv1.ListMembersResponse, error) {
	members, err := s.members()
	if err != nil {
		return reply[*ferryv1.ListMembersResponse](ctx, s.a, nil, err)
	}
	leader := ""
	for _, m := range members {
		if m.GetLeader() {
			leader = m.GetId()
		}
	}
	page, next, err := paginateBy(members, (*ferryv1.Member).GetId, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return reply[*ferryv1.ListMembersResponse](ctx, s.a, nil, err)
	}
	st := s.a.membership.Stats()
	return &ferryv1.ListMembersResponse{
		Members:       page,
		NextPageToken: next,
		LeaderId:      leader,
		LeaderAddress: s.a.proposer.LeaderAPIAddress(),
		LastIndex:     st.LastIndex,
		CommitIndex:   st.CommitIndex,
		AppliedIndex:  st.AppliedIndex,
		NodeId:        s.a.membership.ID(),
	}, nil
}

// members joins the Raft configuration with the API addresses the
// ledger records.
func (s *membershipService) members() ([]*ferryv1.Member, error) {
	ms, err := s.a.membership.Members()
	if err != nil {
		return nil, err
	}
	api := map[string]string{}
	for _, n := range s.a.ledger.Nodes() {
		api[n.GetId()] = n.GetApiAddress()
	}
	out := make([]*ferryv1.Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, &ferryv1.Member{
			Id:          m.ID,
			RaftAddress: m.RaftAddress,
			ApiAddress:  api[m.ID],
			Voter:       m.Suffrage == "Voter",
			Leader:      m.Leader,
		})
	}
	return out, nil
}

// AddVoter adds a coordinator, then records its API address so followers
// can forward to it when it leads. Adding a member again is harmless, so
// a restarted node may simply ask again. A request_id is recorded with
// the address (PutNode), and its repeat answers the members without
// touching the configuration.
func (s *membershipService) AddVoter(ctx context.Context, req *ferryv1.AddVoterRequest) (*ferryv1.AddVoterResponse, error) {
	const method = "AddVoter"
	c := &checker{}
	checkNodeID(c, req.GetId())
	checkHostPort(c, "raft_address", req.GetRaftAddress())
	checkHostPort(c, "api_address", req.GetApiAddress())
	checkRequestID(c, req.GetRequestId())
	err := c.err()
	var again bool
	if err == nil {
		again, err = s.a.replayed(req.GetRequestId(), method, req.GetId())
	}
	if err == nil && !again {
		err = s.a.membership.AddVoter(ctx, req.GetId(), req.GetRaftAddress())
		var pe *consensus.PeerError
		if errors.As(err, &pe) {
			err = precondition("raft_address", "%s does not answer as a coordinator's Raft port (%v); give the node's --raft-listen address, and start it first with the cluster's coordinator certificate", req.GetRaftAddress(), pe.Err)
		}
	}
	if err == nil && !again {
		node := &ledgerv1.Node{Id: req.GetId(), ApiAddress: req.GetApiAddress(), RaftAddress: req.GetRaftAddress()}
		cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutNode{PutNode: &ledgerv1.PutNode{Node: node}}}
		_, err = s.a.propose(ctx, withRequest(cmd, req.GetRequestId(), method, req.GetId()))
	}
	var members []*ferryv1.Member
	if err == nil {
		members, err = s.members()
	}
	return reply(ctx, s.a, &ferryv1.AddVoterResponse{Members: members}, err)
}

// RemoveVoter removes a coordinator and forgets its addresses. A leader
// removing itself steps down and stops its Raft, so its record is deleted
// first and restored if the removal fails. A request_id is recorded with
// the forgetting of the addresses (DeleteNode), and its repeat answers the
// members instead of NOT_FOUND; not a leader's removal of itself, which
// it could not record once removed.
func (s *membershipService) RemoveVoter(ctx context.Context, req *ferryv1.RemoveVoterRequest) (*ferryv1.RemoveVoterResponse, error) {
	const method = "RemoveVoter"
	c := &checker{}
	checkNodeID(c, req.GetId())
	checkRequestID(c, req.GetRequestId())
	err := c.err()
	var again bool
	if err == nil {
		again, err = s.a.replayed(req.GetRequestId(), method, req.GetId())
	}
	switch {
	case err != nil || again:
	case req.GetId() == s.a.membership.ID():
		err = s.removeSelf(ctx)
	default:
		err = s.a.membership.RemoveVoter(ctx, req.GetId())
		if errors.Is(err, consensus.ErrUnknownMember) {
			err = notFoundf("id", "coordinator %q", req.GetId())
		}
		if err == nil {
			_, err = s.a.propose(ctx, withRequest(deleteNode(req.GetId()), req.GetRequestId(), method, req.GetId()))
		}
	}
	if err != nil {
		return reply[*ferryv1.RemoveVoterResponse](ctx, s.a, nil, err)
	}
	// After removing itself this node may no longer know the configuration.
	members, _ := s.members()
	return &ferryv1.RemoveVoterResponse{Members: members}, nil
}

func (s *membershipService) removeSelf(ctx context.Context) error {
	id := s.a.membership.ID()
	old, had := s.a.ledger.Node(id)
	if _, err := s.a.propose(ctx, deleteNode(id)); err != nil {
		return err
	}
	err := s.a.membership.RemoveVoter(ctx, id)
	if err != nil && had {
		if _, perr := s.a.propose(ctx, &ledgerv1.Command{Op: &ledgerv1.Command_PutNode{PutNode: &ledgerv1.PutNode{Node: old}}}); perr != nil {
			return fmt.Errorf("%w (and restoring its address record failed: %v)", err, perr)
		}
	}
	return err
}

func deleteNode(id string) *ledgerv1.Command {
	return &ledgerv1.Command{Op: &ledgerv1.Command_DeleteNode{DeleteNode: &ledgerv1.DeleteResource{Name: id}}}
}

func checkNodeID(c *checker, id string) {
	switch {
	case id == "":
		c.add("id", "required: the coordinator's node ID")
	case !nodeIDPattern.MatchString(id):
		c.add("id", "%q is not a node ID (letters, digits, '.', '_', '-'; at most 64)", id)
	}
}
