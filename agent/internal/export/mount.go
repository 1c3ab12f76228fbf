package export

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// open makes the job's destination directory reachable and returns it,
// with what undoes that (an unmount for a share).
func (d *Driver) open(ctx context.Context, job *runner.Job) (string, func(), error) {
	dst := job.Assignment.GetJob().GetExport().GetDestination()
	switch dst.GetType() {
	case ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_NFS, ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_SMB:
		return d.mount(ctx, job, dst)
	}
	dir := dst.GetPath()
	st, err := os.Stat(dir)
	if err != nil {
		return "", nil, fmt.Errorf("destination %s: %w", dir, err)
	}
	if !st.IsDir() {
		return "", nil, fmt.Errorf("destination %s is not a directory", dir)
	}
	return dir, func() {}, nil
}

// mount mounts an NFS export or SMB share on a directory of its own
// under MountDir, named after the job and its epoch.
func (d *Driver) mount(ctx context.Context, job *runner.Job, dst *ferryv1.ExportDestination) (string, func(), error) {
	if d.opts.MountDir == "" {
		return "", nil, errors.New("this agent has no directory for mounts")
	}
	point := filepath.Join(d.opts.MountDir, path.Base(job.Name())+"-"+strconv.FormatInt(job.Epoch(), 10))
	if err := os.MkdirAll(point, 0o700); err != nil {
		return "", nil, err
	}
	argv, credFile, err := d.MountCommand(dst, point, job.Assignment.GetSecrets())
	if err != nil {
		return "", nil, err
	}
	err = d.opts.Run(ctx, argv)
	if credFile != "" {
		_ = os.Remove(credFile)
	}
	if err != nil {
		_ = os.Remove(point)
		return "", nil, fmt.Errorf("mount %s: %w", dst.GetShare(), err)
	}
	release := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.opts.Run(ctx, []string{"umount", point}); err != nil {
			d.opts.Log.Warn("unmount an export destination", "path", point, "err", err)
			return
		}
		_ = os.Remove(point)
	}
	dir := filepath.Join(point, dst.GetPath())
	if err := os.MkdirAll(dir, 0o750); err != nil {
		release()
		return "", nil, fmt.Errorf("destination %s in %s: %w", dst.GetPath(), dst.GetShare(), err)
	}
	return dir, release, nil
}

// MountCommand is the command that mounts dst on point. An SMB share's
// password goes in a credentials file (mode 0600, beside the mount
// points; the caller removes it once mounted), never on the command line.
func (d *Driver) MountCommand(dst *ferryv1.ExportDestination, point string, secrets map[string]string) ([]string, string, error) {
	switch dst.GetType() {
	case ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_NFS:
		return []string{"mount", "-t", "nfs", "-o", "hard,timeo=600", dst.GetShare(), point}, "", nil
	case ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_SMB:
		pw, ok := secrets[dst.GetCredential()]
		if !ok {
			return nil, "", fmt.Errorf("the assignment has no secret of %s", dst.GetCredential())
		}
		if strings.ContainsAny(pw, "\n") {
			return nil, "", fmt.Errorf("the password of %s holds a newline, which a credentials file cannot", dst.GetCredential())
		}
		content := "username=" + dst.GetUser() + "\npassword=" + pw + "\n"
		if dst.GetDomain() != "" {
			content += "domain=" + dst.GetDomain() + "\n"
		}
		cred := point + ".cred"
		if err := os.WriteFile(cred, []byte(content), 0o600); err != nil {
			return nil, "", err
		}
		return []string{"mount", "-t", "cifs", "-o", "credentials=" + cred + ",uid=0,gid=0,file_mode=0640,dir_mode=0750,nounix,noserverino",
			dst.GetShare(), point}, cred, nil
	}
	return nil, "", fmt.Errorf("destination type %s is not mounted", dst.GetType())
}

func runCommand(ctx context.Context, argv []string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
