package client

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
)

// replayStream is a server stream that may still move to another node: it
// keeps the request and, when the stream fails before its first message
// with an error of following the leader, opens the stream again at the
// next node and sends the request there. After the first message it is a
// plain stream; the caller decides whether to watch again.
type replayStream struct {
	grpc.ClientStream // the current attempt

	c      *Client
	ctx    context.Context
	desc   *grpc.StreamDesc
	method string
	opts   []grpc.CallOption
	addr   string

	req       any
	closeSent bool
	received  bool
	attempt   int
}

func (s *replayStream) SendMsg(m any) error {
	s.req = m
	return s.ClientStream.SendMsg(m)
}

func (s *replayStream) CloseSend() error {
	s.closeSent = true
	return s.ClientStream.CloseSend()
}

func (s *replayStream) RecvMsg(m any) error {
	for {
		err := s.ClientStream.RecvMsg(m)
		if err == nil {
			if !s.received {
				s.received = true
				s.c.setTarget(s.addr)
			}
			return nil
		}
		if s.received || s.req == nil || errors.Is(err, io.EOF) {
			return err
		}
		if !s.moveOn(err) {
			return err
		}
	}
}

// moveOn opens the stream again where reroute says, and resends the
// request. It reports false when the failure is final.
func (s *replayStream) moveOn(err error) bool {
	s.attempt++
	next, wait, ok := s.c.reroute(s.addr, err, s.attempt)
	if !ok || s.attempt >= s.c.opts.MaxAttempts || sleep(s.ctx, wait) != nil {
		return false
	}
	cs, openErr := s.c.openAt(s.ctx, next, s.desc, s.method, s.opts)
	if openErr != nil {
		return false
	}
	// A send that fails shows its cause on the next receive, which decides.
	_ = cs.SendMsg(s.req)
	if s.closeSent {
		_ = cs.CloseSend()
	}
	s.ClientStream, s.addr = cs, next
	return true
}
