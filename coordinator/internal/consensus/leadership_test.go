package consensus

import "testing"

func TestLeadershipFanOut(t *testing.T) {
	var l leadership
	a, cancelA := l.subscribe()
	b, cancelB := l.subscribe()
	defer cancelB()
	for name, ch := range map[string]<-chan bool{"a": a, "b": b} {
		if v := <-ch; v {
			t.Errorf("%s: first value = true, want the current state false", name)
		}
	}

	// A reader that falls behind sees only the latest state.
	l.publish(true)
	l.publish(false)
	l.publish(true)
	if v := <-a; !v {
		t.Error("a: got false, want the latest value true")
	}
	select {
	case v := <-a:
		t.Errorf("a: stale value %v still queued", v)
	default:
	}

	cancelA()
	cancelA() // idempotent
	if _, ok := <-a; ok {
		t.Error("a: channel open after cancel")
	}
	late, cancelLate := l.subscribe()
	defer cancelLate()
	if v := <-late; !v {
		t.Error("late subscriber: first value = false, want current true")
	}

	l.close()
	for name, ch := range map[string]<-chan bool{"b": b, "late": late} {
		if v, ok := <-ch; !ok || v {
			t.Errorf("%s: after close got (%v, %v), want a final false", name, v, ok)
		}
		if _, ok := <-ch; ok {
			t.Errorf("%s: channel open after close", name)
		}
	}
	closed, cancelClosed := l.subscribe()
	defer cancelClosed()
	if _, ok := <-closed; ok {
		t.Error("subscribe after close: channel open")
	}
}
