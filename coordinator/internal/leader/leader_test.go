package leader

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type fakeNode struct {
	ch       chan bool
	mu       sync.Mutex
	barriers int
	failing  int // barriers that fail before one succeeds
}

func (n *fakeNode) SubscribeLeadership() (<-chan bool, func()) { return n.ch, func() {} }

func (n *fakeNode) Barrier(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.barriers++
	if n.failing > 0 {
		n.failing--
		return errors.New("not yet")
	}
	return nil
}

// duty records its terms, and panics if one begins before a good barrier.
type duty struct {
	node    *fakeNode
	mu      sync.Mutex
	running bool
	terms   int
	follows int
}

func (d *duty) Lead(ctx context.Context) {
	d.node.mu.Lock()
	if d.node.failing > 0 || d.node.barriers == 0 {
		panic("a term began before its barrier succeeded")
	}
	d.node.mu.Unlock()
	d.mu.Lock()
	d.running, d.terms = true, d.terms+1
	d.mu.Unlock()
	<-ctx.Done()
	d.mu.Lock()
	d.running = false
	d.mu.Unlock()
}

func (d *duty) Follow() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running {
		panic("Follow while Lead still runs")
	}
	d.follows++
}

func (d *duty) state() (running bool, terms, follows int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.running, d.terms, d.follows
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestDutiesRunOnlyWhileLeading(t *testing.T) {
	n := &fakeNode{ch: make(chan bool, 1), failing: 3}
	a, b := &duty{node: n}, &duty{node: n}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, n, nil, a, b); close(done) }()

	n.ch <- false
	time.Sleep(50 * time.Millisecond)
	if r, terms, _ := a.state(); r || terms != 0 {
		t.Fatalf("a follower runs its duties (running %v, terms %d)", r, terms)
	}
	n.ch <- true
	waitUntil(t, "both duties to lead", func() bool {
		ra, _, _ := a.state()
		rb, _, _ := b.state()
		return ra && rb
	})
	n.mu.Lock()
	if n.barriers != 4 {
		t.Errorf("%d barriers before the term began, want 3 failed and 1 good", n.barriers)
	}
	n.mu.Unlock()

	n.ch <- false
	waitUntil(t, "the duties to stop and follow", func() bool {
		r, _, f := a.state()
		return !r && f == 1
	})
	n.ch <- true
	waitUntil(t, "a second term", func() bool { r, terms, _ := b.state(); return r && terms == 2 })

	cancel()
	<-done
	if r, _, _ := a.state(); r {
		t.Error("a duty still runs after Run returned")
	}
}

func TestRepeatedStateIsNoNewTerm(t *testing.T) {
	n := &fakeNode{ch: make(chan bool, 1)}
	a := &duty{node: n}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, n, nil, a); close(done) }()
	n.ch <- true
	waitUntil(t, "the term", func() bool { r, _, _ := a.state(); return r })
	n.ch <- true
	time.Sleep(50 * time.Millisecond)
	if _, terms, _ := a.state(); terms != 1 {
		t.Errorf("%d terms after true twice, want 1", terms)
	}
	close(n.ch) // the node stops
	<-done
	cancel()
}
