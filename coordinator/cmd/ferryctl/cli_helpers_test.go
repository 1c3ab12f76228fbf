package main

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/agenttest"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
)

// cli runs ferryctl's root command in-process against one address.
type cli struct {
	t      *testing.T
	server string
	tlsDir string
	env    map[string]string
}

// result is what one ferryctl run printed and its exit code.
type result struct {
	out, err string
	code     int
}

// run runs ferryctl with args (global flags first) and stdin.
func (c *cli) runIn(stdin io.Reader, args ...string) result {
	c.t.Helper()
	var out, errOut strings.Builder
	full := append([]string{"--server", c.server, "--tls-dir", c.tlsDir, "--timeout", "20s"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := Execute(ctx, full, IO{In: stdin, Out: &out, Err: &errOut, Getenv: func(k string) string { return c.env[k] }})
	return result{out: out.String(), err: errOut.String(), code: code}
}

// runTTY runs ferryctl as if stdin were a terminal that types answer.
func (c *cli) runTTY(answer string, args ...string) result {
	c.t.Helper()
	var out, errOut strings.Builder
	full := append([]string{"--server", c.server, "--tls-dir", c.tlsDir, "--timeout", "20s"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := Execute(ctx, full, IO{In: strings.NewReader(answer), Out: &out, Err: &errOut, InTerminal: true,
		Getenv: func(k string) string { return c.env[k] }})
	return result{out: out.String(), err: errOut.String(), code: code}
}

func (c *cli) run(args ...string) result {
	c.t.Helper()
	return c.runIn(strings.NewReader(""), args...)
}

// ok runs ferryctl and fails the test unless it exits 0.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 {
		c.t.Fatalf("ferryctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.out, r.err)
	}
	return r.out
}

// json runs ferryctl with -o json and decodes its output.
func (c *cli) json(args ...string) map[string]any {
	c.t.Helper()
	out := c.ok(append(args, "-o", "json")...)
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		c.t.Fatalf("ferryctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
	return m
}

// path walks decoded JSON: path(m, "migration_server", "host").
func path(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

// slowCopier moves each disk in steps, so a watch sees live progress.
func slowCopier(steps int, pause time.Duration) agenttest.Copier {
	return func(ctx context.Context, _, _ string, size int64, add func(int64)) error {
		for i := 0; i < steps; i++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
			add(size / int64(steps))
		}
		return nil
	}
}

// startAgent runs a real agent registering hostName, pointed at addr.
func startAgent(t *testing.T, c *testcluster.Cluster, addr, hostName string, copy agenttest.Copier) *agenttest.Agent {
	t.Helper()
	const gib = 1 << 30
	return agenttest.Start(t, agenttest.Options{Coordinators: []string{addr}, HostName: hostName, Cluster: "prod", Credentials: c.AgentCredentials(hostName),
		Copy: copy, CacheTotal: 100 * gib, CacheFree: 50 * gib, Logger: c.Log})
}

// waitHost waits until the host is registered and connected.
func (c *cli) waitHost(name string) {
	c.t.Helper()
	testcluster.Eventually(c.t, 15*time.Second, name+" is registered and connected", func() bool {
		r := c.run("host", "get", name, "-o", "json", "--linearizable")
		var m map[string]any
		return r.code == 0 && json.Unmarshal([]byte(r.out), &m) == nil && path(m, "connected") == true
	})
}
