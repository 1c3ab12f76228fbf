package runner

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// preparer records that it ran and answers in or err.
type preparer struct {
	d   *copyDriver
	in  *ferryv1.GuestInspection
	err error
}

func (p *preparer) Prepare(_ context.Context, _ *Job) (*ferryv1.GuestInspection, error) {
	p.d.record("prepare")
	return p.in, p.err
}

// TestGuestConversionStep: PREPARING runs between the copy and the upload
// when the job converts its guest (AUTO on a VMware source, ON anywhere),
// not otherwise (AUTO on KVM, OFF); its inspection is the result's, and
// its failure fails the job naming the step, before any upload.
func TestGuestConversionStep(t *testing.T) {
	in := &ferryv1.GuestInspection{OsType: "linux", Distribution: "debian", Changes: []string{"removed package open-vm-tools"}}
	for _, tc := range []struct {
		name       string
		platform   ferryv1.Platform
		conversion ferryv1.GuestConversion
		err        error
		wantCalls  string
		wantReason string
	}{
		{"VMware auto", ferryv1.Platform_PLATFORM_VMWARE, ferryv1.GuestConversion_GUEST_CONVERSION_UNSPECIFIED, nil, "convert,prepare,upload,configure", ""},
		{"VMware off", ferryv1.Platform_PLATFORM_VMWARE, ferryv1.GuestConversion_GUEST_CONVERSION_OFF, nil, "convert,upload,configure", ""},
		{"KVM auto", ferryv1.Platform_PLATFORM_KVM, ferryv1.GuestConversion_GUEST_CONVERSION_AUTO, nil, "convert,upload,configure", ""},
		{"KVM on", ferryv1.Platform_PLATFORM_KVM, ferryv1.GuestConversion_GUEST_CONVERSION_ON, nil, "convert,prepare,upload,configure", ""},
		{"failure", ferryv1.Platform_PLATFORM_VMWARE, ferryv1.GuestConversion_GUEST_CONVERSION_ON, errors.New("virt-v2v-in-place: inspection could not detect the source guest"),
			"convert,prepare", "convert the guest: virt-v2v-in-place: inspection could not detect the source guest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &copyDriver{chunks: 1, chunk: 1000}
			p := &preparer{d: d, in: in, err: tc.err}
			rec := newRecorder()
			r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{tc.platform: d}, Target: d, Preparer: p}, Reporter: rec})
			a := assignment(t, "migrationJobs/a", 1, "vda")
			a.Source.Type = tc.platform
			a.Job.Options = &ferryv1.MigrationOptions{GuestConversion: tc.conversion}
			if err := r.Start(a); err != nil {
				t.Fatal(err)
			}
			res := rec.result(t)
			if got := strings.Join(d.calls, ","); got != tc.wantCalls {
				t.Fatalf("calls = %s, want %s", got, tc.wantCalls)
			}
			if tc.wantReason != "" {
				if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || res.GetReason() != tc.wantReason || res.GetGuestInspection() != nil {
					t.Fatalf("result = %v, want FAILED: %s", res, tc.wantReason)
				}
				return
			}
			if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
				t.Fatalf("result = %v", res)
			}
			converts := strings.Contains(tc.wantCalls, "prepare")
			if got := res.GetGuestInspection(); converts != (got != nil) || converts && !proto.Equal(got, in) {
				t.Fatalf("guest inspection %v (converts %v)", got, converts)
			}
			var prepared bool
			for _, pt := range res.GetPhaseTimings() {
				prepared = prepared || pt.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_PREPARING
			}
			if prepared != converts {
				t.Fatalf("phase timings %v, PREPARING expected %v", res.GetPhaseTimings(), converts)
			}
		})
	}
}
