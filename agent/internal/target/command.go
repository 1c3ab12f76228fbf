package target

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
)

// Commander runs a program on the host that writes the volumes and returns its
// combined output. Tests record the argv instead of running it.
type Commander interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExecCommander runs programs with os/exec.
type ExecCommander struct {
	// Log receives one debug line per command; nil discards.
	Log *slog.Logger
}

// Run runs name with args. A failure is a *CommandError carrying the
// output, which callers inspect for "already exists" and "not found".
func (r ExecCommander) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if r.Log != nil {
		r.Log.DebugContext(ctx, "run", "argv", append([]string{name}, args...))
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			// Killed because ctx ended: a cancelled job says so.
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return out.Bytes(), &CommandError{Argv: append([]string{name}, args...), Output: out.String(), Err: err}
	}
	return out.Bytes(), nil
}

// CommandError is a program that failed.
type CommandError struct {
	Argv   []string
	Output string
	Err    error
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.Argv, " "), e.Err, strings.TrimSpace(e.Output))
}

func (e *CommandError) Unwrap() error { return e.Err }

// outputHas reports whether a failed command's output (or error text)
// contains any of the phrases, compared case-insensitively.
func outputHas(out []byte, err error, phrases ...string) bool {
	text := strings.ToLower(string(out))
	if err != nil {
		text += " " + strings.ToLower(err.Error())
	}
	for _, p := range phrases {
		if strings.Contains(text, strings.ToLower(p)) {
			return true
		}
	}
	return false
}
