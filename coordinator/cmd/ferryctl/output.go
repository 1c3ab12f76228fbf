package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/pkg/hostname"
)

// jsonOptions print the API's messages as the API's JSON: proto field
// names, as grpcurl prints them and as plan files are written.
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, Multiline: true, Indent: "  "}

// marshalJSON prints m as indented JSON with a final newline.
func marshalJSON(m proto.Message) ([]byte, error) {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// marshalYAML prints m as YAML: its JSON, read as YAML (JSON is YAML's flow
// style) and written back in block style, keeping the field order.
func marshalYAML(m proto.Message) ([]byte, error) {
	js, err := jsonOptions.Marshal(m)
	if err != nil {
		return nil, err
	}
	return jsonToYAML(js)
}

func jsonToYAML(js []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		return nil, fmt.Errorf("convert JSON to YAML: %w", err)
	}
	blockStyle(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("convert JSON to YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	if bytes.Equal(bytes.TrimSpace(buf.Bytes()), []byte("{}")) {
		return []byte("{}\n"), nil
	}
	return buf.Bytes(), nil
}

// blockStyle clears the flow and quoting styles JSON brings, so the encoder
// writes block style and quotes only what needs quoting.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// printMessage writes m in the JSON or YAML format asked for.
func printMessage(w io.Writer, format string, m proto.Message) error {
	var b []byte
	var err error
	switch format {
	case "json":
		b, err = marshalJSON(m)
	case "yaml":
		b, err = marshalYAML(m)
	default:
		return fmt.Errorf("output format %q cannot print a message", format)
	}
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// table writes aligned columns.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(headers) > 0 {
		t.row(headers...)
	}
	return t
}

// row writes one row. Every cell is printed with its control characters
// escaped (\x1b, \n, \t...): names and reasons come from agents and API
// callers, and must not move the cursor or recolour an operator's terminal.
func (t *table) row(cols ...string) {
	for i, c := range cols {
		if c == "" {
			c = "-"
		}
		cols[i] = hostname.Escape(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// field is one line of a detail view: a label and its value.
type field struct {
	label, value string
}

// printDetails writes a vertical "Label: value" view of one resource,
// leaving out the fields that are empty.
func printDetails(w io.Writer, fields []field) error {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)}
	for _, f := range fields {
		if f.value != "" {
			fmt.Fprintf(t.tw, "%s:\t%s\n", f.label, escapeLines(f.value))
		}
	}
	return t.flush()
}

// escapeLines escapes control characters in each line of a detail value
// (some values are several lines on purpose, such as a list of warnings).
func escapeLines(v string) string {
	lines := strings.Split(v, "\n")
	for i, l := range lines {
		lines[i] = hostname.Escape(l)
	}
	return strings.Join(lines, "\n")
}

// show prints one resource: as a detail view in table mode, else as the
// response message.
func (a *app) show(msg proto.Message, details func() []field) error {
	if a.output != "table" {
		return printMessage(a.io.Out, a.output, msg)
	}
	return printDetails(a.io.Out, details())
}

// showList prints a list response: as a table in table mode, else as the
// response message. nextToken is the token of the page after it, if any.
func (a *app) showList(msg proto.Message, headers []string, rows [][]string, nextToken string) error {
	if a.output != "table" {
		return printMessage(a.io.Out, a.output, msg)
	}
	t := newTable(a.io.Out, headers...)
	for _, r := range rows {
		t.row(r...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if nextToken != "" {
		fmt.Fprintf(a.io.Err, "more: add --page-token %s\n", nextToken)
	}
	return nil
}

// done prints a short confirmation in table mode, or the response message.
func (a *app) done(msg proto.Message, text string) error {
	if a.output != "table" {
		return printMessage(a.io.Out, a.output, msg)
	}
	_, err := fmt.Fprintln(a.io.Out, text)
	return err
}
