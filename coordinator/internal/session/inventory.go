package session

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// SourceInventory asks the agent of server's host to connect to src and
// read its inventory. The errors are gRPC statuses: UNAVAILABLE when the
// agent is not (or no longer) connected, FAILED_PRECONDITION with the
// agent's reason when reading failed.
func (m *Manager) SourceInventory(ctx context.Context, src *ferryv1.Source, server *ferryv1.MigrationServer) (*ferryv1.SourceInventory, error) {
	host := HostName(server.GetHost())
	s := m.session(host)
	if s == nil || !s.welcomed.Load() {
		return nil, status.Errorf(codes.Unavailable, "the agent on %s is not connected", host)
	}
	if err := s.mayReceive(host); err != nil {
		return nil, status.Errorf(codes.Internal, "inventory of %s: %v", src.GetName(), err)
	}
	secrets, err := m.secretsOf(src)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.nextID++
	id := fmt.Sprintf("inventory-%d", m.nextID)
	m.mu.Unlock()
	answer := make(chan *agentv1.InventoryResponse, 1)
	s.mu.Lock()
	s.waiting[id] = answer
	s.synced[src.GetName()] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waiting, id)
		s.mu.Unlock()
	}()
	req := &agentv1.InventoryRequest{RequestId: id, Source: src, MigrationServer: server, Secrets: secrets}
	if err := s.send(ctx, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_InventoryRequest{InventoryRequest: req}}); err != nil {
		return nil, unavailable(host, err)
	}
	select {
	case r := <-answer:
		if r.GetError() != "" {
			return nil, status.Errorf(codes.FailedPrecondition, "the agent on %s could not read the inventory of %s: %s", host, src.GetName(), r.GetError())
		}
		if r.GetInventory() == nil {
			// An agent from before the full inventory sends the VMs alone.
			return &ferryv1.SourceInventory{Vms: r.GetVms()}, nil
		}
		return r.GetInventory(), nil
	case <-s.ctx.Done():
		return nil, status.Errorf(codes.Unavailable, "the agent on %s went away while reading the inventory of %s", host, src.GetName())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func unavailable(host string, err error) error {
	if errors.Is(err, ErrNotConnected) {
		return status.Errorf(codes.Unavailable, "the agent on %s is not connected", host)
	}
	return err
}

// inventoryAnswer hands an agent's answer to the call waiting for it.
func (m *Manager) inventoryAnswer(s *session, r *agentv1.InventoryResponse) {
	s.mu.Lock()
	answer, ok := s.waiting[r.GetRequestId()]
	s.mu.Unlock()
	if !ok {
		m.log.Debug("inventory answer nobody waits for", "host", s.host, "request", r.GetRequestId())
		return
	}
	select {
	case answer <- r:
	default:
	}
}

// hostKey records the SSH host key a KVM source presented first (trust on
// first use). Only the agent that was sent to that source may report it:
// the host of a running job of the source, or a host asked to sync it in
// this session. The key must parse as an SSH public key and is recorded in
// authorized_keys form. A key different from the recorded one is refused
// and logged.
func (m *Manager) hostKey(ctx context.Context, s *session, k *agentv1.HostKeyObserved) error {
	if !m.connectsTo(s, k.GetSource()) {
		m.log.Warn("refused a source host key from a host that runs no job or sync of the source", "host", s.host, "source", k.GetSource())
		return nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k.GetHostKey()))
	if err != nil {
		m.log.Warn("refused a source host key that is not an SSH public key", "host", s.host, "source", k.GetSource(), "err", err)
		return nil
	}
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_RecordSourceHostKey{RecordSourceHostKey: &ledgerv1.RecordSourceHostKey{
		Name: k.GetSource(), HostKey: key}}}
	err = m.propose(ctx, cmd)
	switch {
	case err == nil:
		m.log.Info("recorded the host key a source presented first", "host", s.host, "source", k.GetSource())
		return nil
	case errors.Is(err, ledger.ErrFailedPrecondition), errors.Is(err, ledger.ErrNotFound):
		m.log.Warn("refused a source host key", "host", s.host, "source", k.GetSource(), "err", err)
		return nil
	default:
		return fmt.Errorf("record host key of %s: %w", k.GetSource(), err)
	}
}

// connectsTo says whether s's agent was sent to source: it runs a job of
// it, or was asked to sync it during this session.
func (m *Manager) connectsTo(s *session, source string) bool {
	s.mu.Lock()
	synced := s.synced[source]
	s.mu.Unlock()
	if synced {
		return true
	}
	for _, j := range m.ledger.Jobs(ledger.JobFilter{State: stateRunning, Source: source}) {
		if HostName(j.GetAssignedHost()) == s.host {
			return true
		}
	}
	return false
}

// secretsOf unseals the credentials a source uses, by credential name.
// The result holds secrets: never log it.
func (m *Manager) secretsOf(src *ferryv1.Source) (map[string]string, error) {
	secrets := map[string]string{}
	for _, name := range credentialsOf(src) {
		secret, err := m.unseal(name)
		if err != nil {
			return nil, err
		}
		secrets[name] = secret
	}
	return secrets, nil
}
