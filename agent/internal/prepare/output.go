package prepare

import (
	"bufio"
	"bytes"
	"regexp"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// v2vError is the error virt-v2v-in-place printed: the paragraph after
// "virt-v2v-in-place: error: ", joined into one line.
func v2vError(log []byte) string {
	i := bytes.LastIndex(log, []byte("virt-v2v-in-place: error: "))
	if i < 0 {
		return ""
	}
	rest := string(log[i+len("virt-v2v-in-place: error: "):])
	if j := strings.Index(rest, "\n\n"); j >= 0 {
		rest = rest[:j]
	}
	return strings.Join(strings.Fields(rest), " ")
}

// The inspection virt-v2v prints with -v, one "i_key = value" line each,
// and the progress line naming the guest it converts.
var (
	inspectKey = regexp.MustCompile(`^(i_type|i_distro|i_major_version|i_minor_version|i_product_name|i_firmware) = (.*?)\s*$`)
	converting = regexp.MustCompile(`^\[\s*[0-9.]+\] Converting (.*) to run on KVM`)
)

// parseInspection reads what virt-v2v-in-place found and changed from its
// verbose output.
func parseInspection(log []byte) *ferryv1.GuestInspection {
	in := &ferryv1.GuestInspection{}
	var major, minor string
	changes := map[string]bool{}
	add := func(c string) {
		if !changes[c] {
			changes[c] = true
			in.Changes = append(in.Changes, c)
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := inspectKey.FindStringSubmatch(line); m != nil {
			key, val := strings.TrimPrefix(m[1], "i_"), strings.Trim(m[2], `"`)
			switch key {
			case "type":
				setOnce(&in.OsType, val)
			case "distro":
				setOnce(&in.Distribution, val)
			case "major_version":
				setOnce(&major, val)
			case "minor_version":
				setOnce(&minor, val)
			case "product_name":
				setOnce(&in.ProductName, val)
			case "firmware":
				setOnce(&in.Firmware, firmwareName(val))
			}
			continue
		}
		if m := converting.FindStringSubmatch(line); m != nil && in.ProductName == "" {
			in.ProductName = m[1]
		}
		if w, ok := strings.CutPrefix(line, "virt-v2v-in-place: warning: "); ok {
			add("warning: " + w)
		}
		if strings.HasPrefix(line, "virt-v2v-in-place: The QEMU Guest Agent will be installed") {
			add("QEMU guest agent installed at first boot")
		}
		for _, c := range changeLines(line) {
			add(c)
		}
	}
	if major != "" {
		in.Version = major
		if minor != "" {
			in.Version += "." + minor
		}
	}
	if in.Firmware == "" {
		in.Firmware = "bios"
	}
	return in
}

func setOnce(dst *string, v string) {
	if *dst == "" && v != "" && v != "unknown" {
		*dst = v
	}
}

func firmwareName(v string) string {
	v = strings.ToLower(v)
	switch {
	case strings.Contains(v, "uefi"):
		return "uefi"
	case strings.Contains(v, "bios"):
		return "bios"
	}
	return v
}

// changeLines are the changes a line of virt-v2v's verbose output says
// it made: the commands its appliance ran in the guest ("commandrvf: ...").
func changeLines(line string) []string {
	cmd, ok := strings.CutPrefix(line, "commandrvf: ")
	if !ok {
		return nil
	}
	f := strings.Fields(cmd)
	if len(f) == 0 {
		return nil
	}
	prog := f[0][strings.LastIndex(f[0], "/")+1:]
	switch {
	case (prog == "dpkg" && len(f) > 2 && (f[1] == "--purge" || f[1] == "-P" || f[1] == "--remove")) ||
		(prog == "rpm" && len(f) > 2 && f[1] == "-e"):
		var out []string
		for _, p := range f[2:] {
			if !strings.HasPrefix(p, "-") {
				out = append(out, "removed package "+p)
			}
		}
		return out
	case prog == "update-initramfs" || prog == "dracut" || prog == "mkinitrd":
		return []string{"initramfs rebuilt with virtio drivers (" + prog + ")"}
	case prog == "grub-mkconfig" || prog == "grub2-mkconfig" || prog == "update-grub":
		return []string{"bootloader configuration rebuilt (" + prog + ")"}
	}
	return nil
}
