package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// errNotConfirmed ends a job create whose batch was not confirmed.
var errNotConfirmed = errors.New("not confirmed; nothing was created")

func (a *app) jobPreview() *cobra.Command {
	jf := newJobFlags()
	cmd := &cobra.Command{
		Use:   "preview (-f PLAN | --source SRC --migration-server SRV --vm VM ...)",
		Short: "Show what a job create would make and use, creating nothing",
		Long: `Check a batch as 'job create' would and show what it would use, creating
nothing: each job's target as the coordinator fills it (name, vCPUs,
memory, disks, NICs with the addresses they would get), the vCPUs and
memory the started VMs take of the target cluster's connected hosts, the
disk bytes they write to the primary storage against its free space, the
addresses they take of each L3 network's range, the disk bytes they write
to the migration server's cache against the free space of its cache path
(less what its running jobs reserve; jobs that do not fit at once wait), every pre-check that
would refuse the batch, notes on what create would do that the request
does not say (a target left stopped because its source VM is paused or
shut off; for a KVM source, the libvirt and QEMU versions of its last sync
and the copy method each job gets and why: backup API for a running or
paused VM, cold image read for a shut-off one, the snapshot method for a
running or paused VM on a host without the backup API; a source too old
for the method its VM needs is a failed pre-check naming both versions), and
whether it fits. It takes the flags and plan
files of 'job create'.`,
		Example: `  ferryctl job preview -f plan.yaml
  ferryctl job preview --source vc --migration-server vmw-1 --vm vm-1042 \
      --cluster prod --storage nfs-1 --network-mapping-group dc1 -o json`,
		Args:    noArgs,
		PreRunE: jf.preRun,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			req, err := a.batchRequest(ctx, cl, jf)
			if err != nil {
				return err
			}
			p, err := cl.Jobs().PreviewMigrationJobs(ctx, previewRequest(req))
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printMessage(a.io.Out, a.output, p)
			}
			return a.printPreview(p)
		}),
	}
	jf.addFlags(cmd)
	return cmd
}

func previewRequest(req *ferryv1.CreateMigrationJobsRequest) *ferryv1.PreviewMigrationJobsRequest {
	return &ferryv1.PreviewMigrationJobsRequest{Source: req.GetSource(), MigrationServer: req.GetMigrationServer(),
		Jobs: req.GetJobs(), NetworkMappingGroup: req.GetNetworkMappingGroup()}
}

// previewAndConfirm previews req, prints the preview (in table mode) and
// says whether to go on: never when a pre-check fails; with --yes; else
// after "y" on a terminal. Without a terminal and --yes it refuses.
func (a *app) previewAndConfirm(ctx context.Context, cl *client.Client, req *ferryv1.CreateMigrationJobsRequest, yes bool) (*ferryv1.PreviewMigrationJobsResponse, error) {
	p, err := cl.Jobs().PreviewMigrationJobs(ctx, previewRequest(req))
	if err != nil {
		return nil, err
	}
	if a.output == "table" {
		if err := a.printPreview(p); err != nil {
			return p, err
		}
	}
	n := len(p.GetJobs())
	switch {
	case len(p.GetFailedChecks()) > 0:
		return p, fmt.Errorf("%d pre-check(s) failed (listed in the preview); nothing was created", len(p.GetFailedChecks()))
	case yes:
		return p, nil
	case !a.io.InTerminal:
		return p, usagef("standard input is not a terminal, so ferryctl cannot ask whether to create %d job(s); run 'ferryctl job preview' to check the batch, then add --yes", n)
	}
	fmt.Fprintf(a.io.Err, "Create %d job(s)? [y/N] ", n)
	line, err := bufio.NewReader(a.io.In).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(a.io.Err)
		return p, errNotConfirmed
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return p, nil
	}
	return p, errNotConfirmed
}

// printPreview prints a preview as tables: the jobs, the resources, the
// failed checks and the verdict.
func (a *app) printPreview(p *ferryv1.PreviewMigrationJobsResponse) error {
	t := newTable(a.io.Out, "#", "SOURCE VM", "TARGET VM", "CPUS", "MEMORY", "DISKS", "BOOTS", "NICS")
	for i, j := range p.GetJobs() {
		tv := j.GetTarget()
		var disk int64
		boots := "-"
		for k, d := range tv.GetDisks() {
			disk += d.GetSizeBytes()
			if d.GetBoot() || (k == 0 && boots == "-") {
				boots = d.GetSourceDisk()
			}
		}
		var nics []string
		for _, n := range tv.GetNics() {
			nics = append(nics, fmt.Sprintf("%s %s %s", n.GetMac(), strings.TrimPrefix(n.GetL3Network(), "l3Networks/"), orDefault(n.GetIp(), "-")))
		}
		t.row(strconv.Itoa(i), j.GetSourceVm(), tv.GetVmName(), strconv.Itoa(int(tv.GetCpus())), humanBytes(tv.GetMemoryBytes()),
			fmt.Sprintf("%d, %s", len(tv.GetDisks()), humanBytes(disk)), boots, strings.Join(nics, "; "))
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.io.Out)
	t = newTable(a.io.Out, "RESOURCE", "USE", "REQUESTED", "AVAILABLE", "FITS", "NOTE")
	for _, u := range p.GetUsages() {
		req, avail := usageAmount(u.GetKind(), u.GetRequested()), "unknown"
		fits := "unknown"
		if u.GetKnown() {
			avail, fits = usageAmount(u.GetKind(), u.GetAvailable()), yesNo(u.GetFits())
		}
		t.row(u.GetResource(), usageKind(u.GetKind()), req, avail, fits, u.GetNote())
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(p.GetNotes()) > 0 {
		fmt.Fprintf(a.io.Out, "\nNotes:\n")
		for _, l := range p.GetNotes() {
			fmt.Fprintf(a.io.Out, "  %s\n", l)
		}
	}
	if len(p.GetFailedChecks()) > 0 {
		fmt.Fprintf(a.io.Out, "\nFailed pre-checks:\n")
		for _, l := range p.GetFailedChecks() {
			fmt.Fprintf(a.io.Out, "  %s\n", l)
		}
	}
	verdict := "the batch fits"
	if !p.GetFits() {
		verdict = "the batch does NOT fit"
	}
	_, err := fmt.Fprintf(a.io.Out, "\n%d job(s): %s\n", len(p.GetJobs()), verdict)
	return err
}

func usageKind(k ferryv1.PreviewResourceKind) string {
	switch k {
	case ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS:
		return "vCPUs"
	case ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_MEMORY_BYTES:
		return "memory"
	case ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_DISK_BYTES:
		return "disk"
	case ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_IP_ADDRESSES:
		return "addresses"
	case ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_CACHE_BYTES:
		return "cache"
	}
	return enumLower(k)
}

func usageAmount(k ferryv1.PreviewResourceKind, n int64) string {
	switch k {
	case ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_MEMORY_BYTES, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_DISK_BYTES,
		ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_CACHE_BYTES:
		if n < 0 {
			return "-" + humanBytes(-n)
		}
		return humanBytes(n)
	}
	return strconv.FormatInt(n, 10)
}

// printCreated prints what job create made. In JSON and YAML it is one
// document: the preview, and the created jobs (none when not confirmed)
// as CreateMigrationJobsResponse has them.
func (a *app) printCreated(p *ferryv1.PreviewMigrationJobsResponse, resp *ferryv1.CreateMigrationJobsResponse) error {
	if a.output == "table" {
		if resp == nil {
			return nil
		}
		fmt.Fprintln(a.io.Out)
		return a.showCreatedJobs(resp)
	}
	doc := struct {
		Preview json.RawMessage `json:"preview"`
		Jobs    json.RawMessage `json:"jobs,omitempty"`
	}{}
	var err error
	if doc.Preview, err = jsonOptions.Marshal(p); err != nil {
		return err
	}
	if resp != nil {
		var created struct {
			Jobs json.RawMessage `json:"jobs"`
		}
		b, err := jsonOptions.Marshal(resp)
		if err == nil {
			err = json.Unmarshal(b, &created)
		}
		if err != nil {
			return err
		}
		doc.Jobs = created.Jobs
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if a.output == "yaml" {
		if b, err = jsonToYAML(b); err != nil {
			return err
		}
	}
	_, err = a.io.Out.Write(b)
	return err
}
