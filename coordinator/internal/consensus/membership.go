package consensus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

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

// ErrUnknownMember means a membership change named an id that is not in
// the Raft configuration.
var ErrUnknownMember = errors.New("not a member of the raft configuration")

// AddVoter adds (or re-addresses) a voting member. Only the leader can
// change membership; elsewhere it fails with ErrNotLeader. The joining
// node must already be running (Open without Bootstrap): AddVoter first
// dials raftAddr and, over TLS, checks that it presents a coordinator
// certificate and speaks Raft (ALPN), and fails with a PeerError
// (ErrPeerUnverified) otherwise, so that a voter that can never answer
// does not cost the cluster its quorum. Over plain TCP (--insecure) it
// only checks that something listens.
// Recording its API address in the ledger (PutNode) is the caller's
// business.
func (n *Node) AddVoter(ctx context.Context, id, raftAddr string) error {
	if id == "" || raftAddr == "" {
		return errors.New("add voter: id and raft address are required")
	}
	if !n.IsLeader() {
		return fmt.Errorf("add voter %s: %w", id, n.mapErr(raft.ErrNotLeader))
	}
	if err := n.stream.probe(ctx, raftAddr); err != nil {
		return fmt.Errorf("add voter %s: %w", id, err)
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
// change membership. An id that is not in the configuration fails with
// ErrUnknownMember and writes nothing. A leader that removes itself steps
// down and shuts its Raft down.
func (n *Node) RemoveVoter(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("remove voter: id is required")
	}
	if !n.IsLeader() {
		return fmt.Errorf("remove voter %s: %w", id, n.mapErr(raft.ErrNotLeader))
	}
	members, err := n.Members()
	if err != nil {
		return fmt.Errorf("remove voter %s: %w", id, err)
	}
	if !slices.ContainsFunc(members, func(m Member) bool { return m.ID == id }) {
		return fmt.Errorf("remove voter %s: %w", id, ErrUnknownMember)
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
	// By ID: Raft keeps the order members joined in, which a cluster
	// rebuilt or joined concurrently does not repeat; operators and
	// scripts compare lists.
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return members, nil
}
