package config

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := func() Config {
		return Config{Coordinators: []string{"127.0.0.1:7443"}, HostName: "h1", DataDir: "/var/lib/ferry", Insecure: true}
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		flag   string
	}{
		{"ok", func(*Config) {}, ""},
		{"no coordinator", func(c *Config) { c.Coordinators = nil }, "--coordinator"},
		{"bad address", func(c *Config) { c.Coordinators = []string{"nope"} }, "--coordinator"},
		{"slash in host", func(c *Config) { c.HostName = "a/b" }, "--host-name"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "--data-dir"},
		{"relative cache", func(c *Config) { c.CachePath = "cache" }, "--cache-path"},
		{"insecure and tls", func(c *Config) { c.TLSDir = "/pki" }, "--insecure"},
		{"no tls", func(c *Config) { c.Insecure = false }, "--tls-dir"},
		{"partial files", func(c *Config) { c.Insecure, c.CAFile = false, "/ca.crt" }, "--ca"},
		{"tls dir", func(c *Config) { c.Insecure, c.TLSDir = false, "/pki" }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.change(&c)
			err := c.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.flag) {
				t.Fatalf("error %v does not name %s", err, tc.flag)
			}
		})
	}
}

func TestSplitAddresses(t *testing.T) {
	if got := SplitAddresses(" a:1, b:2,,"); len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Fatalf("SplitAddresses = %q", got)
	}
}
