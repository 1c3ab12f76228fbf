package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// enumFlag is a flag holding one value of a proto enum, spelled in lower
// case with dashes ("virtio-scsi"); its help lists the choices.
type enumFlag struct {
	desc    protoreflect.EnumDescriptor
	aliases map[string]string // extra spellings: "vcenter" → "vmware"
	value   protoreflect.EnumNumber
}

func newEnumFlag(d protoreflect.EnumDescriptor, aliases map[string]string) *enumFlag {
	return &enumFlag{desc: d, aliases: aliases}
}

func (f *enumFlag) String() string {
	if f.value == 0 {
		return ""
	}
	v := f.desc.Values().ByNumber(f.value)
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(string(v.Name()), enumPrefix(f.desc))), "_", "-")
}

func (f *enumFlag) Set(s string) error {
	if alias, ok := f.aliases[strings.ToLower(s)]; ok {
		s = alias
	}
	n, err := parseEnum(f.desc, s)
	if err != nil {
		return err
	}
	f.value = n
	return nil
}

func (f *enumFlag) Type() string { return strings.Join(enumChoices(f.desc), "|") }

// listFlags are the paging flags of every list command. Without them a
// list fetches every page; with them, one page.
type listFlags struct {
	pageSize  int32
	pageToken string
	onePage   bool
}

func addListFlags(cmd *cobra.Command, f *listFlags) {
	cmd.Flags().Int32Var(&f.pageSize, "page-size", 0, "fetch one page of at most this many (default: every page)")
	cmd.Flags().StringVar(&f.pageToken, "page-token", "", "fetch the page this token names (from a previous --page-size)")
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		f.onePage = c.Flags().Changed("page-size") || c.Flags().Changed("page-token")
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
}

// paginate calls page with each page token, from the flag's on, until the
// last page (or once, with paging flags). page returns the next token.
func paginate(ctx context.Context, f *listFlags, page func(ctx context.Context, token string) (string, error)) error {
	token := f.pageToken
	for {
		next, err := page(ctx, token)
		if err != nil || next == "" || f.onePage {
			return err
		}
		token = next
	}
}

// parseBytes reads a size: plain bytes, or a number with K, M, G, T (or
// KiB, MiB, GiB, TiB: powers of 1024) or KB, MB, GB, TB (powers of 1000).
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	mult, ok := sizeUnits[strings.ToLower(unit)]
	if !ok || num == "" {
		return 0, fmt.Errorf("%q is not a size such as 4GiB, 512MiB or 2000000000", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || v*float64(mult) > math.MaxInt64 {
		return 0, fmt.Errorf("%q is not a size such as 4GiB, 512MiB or 2000000000", s)
	}
	return int64(v * float64(mult)), nil
}

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// keyValues reads "key=value,key=value" with the keys allowed; a bare
// first item is the value of first (when first is not "").
func keyValues(s string, first string, allowed ...string) (map[string]string, error) {
	out := map[string]string{}
	for i, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			if i > 0 || first == "" {
				return nil, fmt.Errorf("%q: want key=value (keys %s)", part, strings.Join(allowed, ", "))
			}
			k, v = first, part
		}
		k = strings.TrimSpace(k)
		known := false
		for _, a := range allowed {
			known = known || a == k
		}
		if !known {
			return nil, fmt.Errorf("%q: unknown key %q (keys %s)", s, k, strings.Join(allowed, ", "))
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

// exactlyOneArg is cobra.ExactArgs(1) with a message that names the argument.
func exactlyOneArg(what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usagef("want one argument, %s; got %d", what, len(args))
		}
		return nil
	}
}

// atMostOneArg accepts an optional argument.
func atMostOneArg(what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > 1 {
			return usagef("want at most one argument, %s; got %d", what, len(args))
		}
		return nil
	}
}

// noArgs refuses positional arguments.
func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

// required checks that flags were given.
func required(cmd *cobra.Command, names ...string) error {
	var missing []string
	for _, n := range names {
		if !cmd.Flags().Changed(n) {
			missing = append(missing, "--"+n)
		}
	}
	if len(missing) > 0 {
		return usagef("%s required", strings.Join(missing, ", "))
	}
	return nil
}

var errNoChange = errors.New("nothing to change: give at least one flag")

// addEnumFlag registers an enum flag.
func addEnumFlag(fs *pflag.FlagSet, f *enumFlag, name, usage string) {
	fs.Var(f, name, usage)
}
