package admission

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// keepSourceState settles the auto_start of the jobs that leave it unset,
// so a migration keeps the VM's state: the target VM is started when the
// source VM runs (or its state is not known), and only defined when the
// source's synced inventory says it is paused or shut off. It returns one
// note per job whose target is left stopped that way. A job that sets
// auto_start keeps it; so does a job with verify_boot, whose target is
// started to prove it boots.
func (a *Admission) keepSourceState(source string, jobs []*ferryv1.MigrationJob) []string {
	inv, _ := a.ledger.SourceInventory(source)
	var notes []string
	for i, j := range jobs {
		if j.GetOptions().AutoStart != nil {
			continue
		}
		if j.Options == nil {
			j.Options = &ferryv1.MigrationOptions{}
		}
		vm, _ := findInventoryVM(inv, j.GetSourceVm())
		state := ""
		switch vm.GetState() {
		case ferryv1.SourceVmState_SOURCE_VM_STATE_PAUSED:
			state = "paused"
		case ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF:
			state = "shut off"
		}
		j.Options.AutoStart = proto.Bool(state == "" || j.Options.GetVerifyBoot())
		if !j.Options.GetAutoStart() {
			notes = append(notes, fmt.Sprintf("jobs[%d].options.auto_start: false: source VM %s is %s, so its target %s is defined but not started; set auto_start true (ferryctl --start) to start it",
				i, vm.GetName(), state, j.GetTarget().GetVmName()))
		}
	}
	return notes
}

// stampPrecopyInterval gives each warm job without a precopy_interval the
// one of the settings (ledger.DefaultPrecopyInterval when they have none).
func (a *Admission) stampPrecopyInterval(jobs []*ferryv1.MigrationJob) {
	d := a.ledger.Settings().GetPrecopyInterval()
	if d == nil {
		d = durationpb.New(ledger.DefaultPrecopyInterval)
	}
	for _, j := range jobs {
		if j.GetOptions().GetMode() != ferryv1.MigrationMode_MIGRATION_MODE_WARM || j.GetOptions().GetPrecopyInterval() != nil {
			continue
		}
		j.Options.PrecopyInterval = proto.Clone(d).(*durationpb.Duration)
	}
}
