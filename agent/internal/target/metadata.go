package target

import (
	"encoding/xml"
	"fmt"
	"strings"
)

// Ferry's namespace in libvirt domain metadata.
const (
	MetadataNamespace = "https://ferry-v2v.dev/xmlns/1"
	metadataPrefix    = "ferry"
)

// Metadata is what Ferry records in a domain's <metadata>: the job that
// defined it (Rollback undefines only its own job's domains) and each
// disk's target, source disk and display name.
type Metadata struct {
	Job   string         `xml:"job,attr"`
	Disks []MetadataDisk `xml:"disk"`
}

// MetadataDisk is one disk of Metadata.
type MetadataDisk struct {
	Target      string `xml:"target,attr"`
	SourceDisk  string `xml:"source-disk,attr"`
	DisplayName string `xml:"display-name,attr"`
}

// String renders the metadata element with the ferry: prefix, e.g.
//
//	<ferry:vm xmlns:ferry="https://ferry-v2v.dev/xmlns/1" job="migrationJobs/j1">
//	  <ferry:disk target="sda" source-disk="vda" display-name="root"/>
//	</ferry:vm>
func (m Metadata) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, `<%s:vm xmlns:%s="%s" job="%s">`, metadataPrefix, metadataPrefix, MetadataNamespace, attr(m.Job))
	for _, d := range m.Disks {
		fmt.Fprintf(&b, `<%s:disk target="%s" source-disk="%s" display-name="%s"/>`,
			metadataPrefix, attr(d.Target), attr(d.SourceDisk), attr(d.DisplayName))
	}
	fmt.Fprintf(&b, `</%s:vm>`, metadataPrefix)
	return b.String()
}

// ParseMetadata reads Ferry's element out of a domain's metadata: either
// the element as virDomainGetMetadata returns it (without its namespace)
// or the whole inner XML of <metadata>. ok is false when there is none.
func ParseMetadata(s string) (m Metadata, ok bool, err error) {
	dec := xml.NewDecoder(strings.NewReader(s))
	for {
		tok, terr := dec.Token()
		if terr != nil {
			return Metadata{}, false, nil
		}
		se, isStart := tok.(xml.StartElement)
		if !isStart || (se.Name.Space != MetadataNamespace && se.Name.Space != "") || se.Name.Local != "vm" {
			continue
		}
		if err := dec.DecodeElement(&m, &se); err != nil {
			return Metadata{}, false, fmt.Errorf("ferry metadata: %w", err)
		}
		return m, true, nil
	}
}

// attr escapes s for a double-quoted XML attribute.
func attr(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
