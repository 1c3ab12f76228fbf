package ledger

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// TestEveryCommandHasAnEntry checks the one table of mutations against
// the Command oneof: every case has an apply, and the table names no
// field the oneof lacks.
func TestEveryCommandHasAnEntry(t *testing.T) {
	op := (&ledgerv1.Command{}).ProtoReflect().Descriptor().Oneofs().ByName("op")
	fields := map[protoreflect.Name]bool{}
	for i := range op.Fields().Len() {
		f := op.Fields().Get(i)
		fields[f.Name()] = true
		if c, ok := commands[f.Name()]; !ok || c.apply == nil {
			t.Errorf("Command.%s (field %d) has no apply in the command table", f.Name(), f.Number())
		}
	}
	for name := range commands {
		if !fields[name] {
			t.Errorf("the command table names %q, which is no case of Command.op", name)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	l := New()
	if _, err := l.Apply(&ledgerv1.Command{}); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("Apply of a command with no op = %v, want ErrUnknownCommand", err)
	}
	if err := l.Refusal(&ledgerv1.Command{}); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("Refusal of a command with no op = %v, want ErrUnknownCommand", err)
	}
}
