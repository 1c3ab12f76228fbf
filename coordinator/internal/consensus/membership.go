package consensus

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// Member is one server of the Raft configuration.
type Member struct {
	ID          string
	RaftAddress string
	// Suffrage is "Voter", "Nonvoter" or "Staging".
	Suffrage string
	Leader   bool
}

// AddVoter adds (or re-addresses) a voting member. Only the leader can
// change membership; elsewhere it fails with ErrNotLeader. The joining
// node must already be running (Open without Bootstrap). Recording its
// API address in the ledger (PutNode) is the caller's business.
func (n *Node) AddVoter(ctx context.Context, id, raftAddr string) error {
	if id == "" || raftAddr == "" {
		return errors.New("add voter: id and raft address are required")
	}
	timeout, err := n.timeout(ctx)
	if err != nil {
		return fmt.Errorf("add voter %s: %w", id, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	f := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, timeout)
	if err := n.await(ctx, f); err != nil {
		return fmt.Errorf("add voter %s at %s: %w", id, raftAddr, err)
	}
	n.log.Info("added voter", "id", id, "raft_address", raftAddr)
	return nil
}

// RemoveVoter removes a member from the configuration. Only the leader can
// change membership. Removing an unknown id is not an error. A leader that
// removes itself steps down and shuts its Raft down.
func (n *Node) RemoveVoter(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("remove voter: id is required")
	}
	timeout, err := n.timeout(ctx)
	if err != nil {
		return fmt.Errorf("remove voter %s: %w", id, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := n.await(ctx, n.raft.RemoveServer(raft.ServerID(id), 0, timeout)); err != nil {
		return fmt.Errorf("remove voter %s: %w", id, err)
	}
	n.log.Info("removed voter", "id", id)
	return nil
}

// Members lists the latest Raft configuration known to this node.
func (n *Node) Members() ([]Member, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("get raft configuration: %w", n.mapErr(err))
	}
	leaderID, _ := n.Leader()
	servers := f.Configuration().Servers
	members := make([]Member, 0, len(servers))
	for _, s := range servers {
		members = append(members, Member{
			ID:          string(s.ID),
			RaftAddress: string(s.Address),
			Suffrage:    s.Suffrage.String(),
			Leader:      leaderID != "" && string(s.ID) == leaderID,
		})
	}
	return members, nil
}
