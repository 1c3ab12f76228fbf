package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// now is the clock of ages in tables; tests pin it.
var now = time.Now

// humanBytes spells a byte count in binary units: "512 B", "1.5 GiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := -1
	for (v >= unit || v <= -unit) && i < len(units)-1 {
		v /= unit
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + units[i]
}

// humanRate spells a rate in bytes per second: "120 MiB/s".
func humanRate(bytesPerSecond float64) string {
	if bytesPerSecond <= 0 {
		return ""
	}
	return humanBytes(int64(bytesPerSecond)) + "/s"
}

// humanDuration spells a duration to the two largest units: "42s",
// "3m20s", "2h5m", "3d4h".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	s := int64(d.Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return twoUnits(s/60, "m", s%60, "s")
	case s < 86400:
		return twoUnits(s/3600, "h", s%3600/60, "m")
	default:
		return twoUnits(s/86400, "d", s%86400/3600, "h")
	}
}

func twoUnits(a int64, ua string, b int64, ub string) string {
	if b == 0 {
		return fmt.Sprintf("%d%s", a, ua)
	}
	return fmt.Sprintf("%d%s%d%s", a, ua, b, ub)
}

// age spells how long ago ts was, or "" when it is unset.
func age(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return humanDuration(now().Sub(ts.AsTime()))
}

// when spells a timestamp in UTC with its age: "2024-06-01 10:00:00Z (5m)".
func when(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format("2006-01-02 15:04:05Z") + " (" + age(ts) + " ago)"
}

// duration spells a proto duration, or "" when it is unset.
func duration(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return humanDuration(d.AsDuration())
}

// enumPrefix is the prefix an enum's values carry: "MIGRATION_JOB_STATE_"
// for MigrationJobState.
func enumPrefix(d protoreflect.EnumDescriptor) string {
	var b strings.Builder
	for i, r := range string(d.Name()) {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String() + "_"
}

// enumShort spells an enum value without its prefix: "RUNNING" for
// MIGRATION_JOB_STATE_RUNNING, "" for the zero value.
func enumShort(e protoreflect.Enum) string {
	if e.Number() == 0 {
		return ""
	}
	v := e.Descriptor().Values().ByNumber(e.Number())
	if v == nil {
		return strconv.Itoa(int(e.Number()))
	}
	return strings.TrimPrefix(string(v.Name()), enumPrefix(e.Descriptor()))
}

// enumLower spells an enum value as a flag takes it: "virtio-scsi".
func enumLower(e protoreflect.Enum) string {
	return strings.ReplaceAll(strings.ToLower(enumShort(e)), "_", "-")
}

// parseEnum reads an enum flag: "virtio-scsi", "VIRTIO_SCSI" and
// "DISK_BUS_VIRTIO_SCSI" are all DISK_BUS_VIRTIO_SCSI. The zero value is
// refused.
func parseEnum(d protoreflect.EnumDescriptor, s string) (protoreflect.EnumNumber, error) {
	up := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(s), "-", "_"))
	prefix := enumPrefix(d)
	for _, name := range []string{up, prefix + up} {
		if v := d.Values().ByName(protoreflect.Name(name)); v != nil && v.Number() != 0 {
			return v.Number(), nil
		}
	}
	return 0, fmt.Errorf("%q is not one of %s", s, strings.Join(enumChoices(d), ", "))
}

// enumChoices lists the values a flag takes.
func enumChoices(d protoreflect.EnumDescriptor) []string {
	var out []string
	vals := d.Values()
	for i := 0; i < vals.Len(); i++ {
		if v := vals.Get(i); v.Number() != 0 {
			s := strings.TrimPrefix(string(v.Name()), enumPrefix(d))
			out = append(out, strings.ReplaceAll(strings.ToLower(s), "_", "-"))
		}
	}
	return out
}

// yesNo spells a bool for a table.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// percent spells done of total: "45.2%", or "" when total is unknown.
func percent(done, total int64) string {
	if total <= 0 {
		return ""
	}
	return strconv.FormatFloat(100*float64(done)/float64(total), 'f', 1, 64) + "%"
}

// resName turns a bare id into collection/id; a full name passes as is.
func resName(collection, arg string) string {
	if arg == "" || strings.Contains(arg, "/") {
		return arg
	}
	return collection + "/" + arg
}
