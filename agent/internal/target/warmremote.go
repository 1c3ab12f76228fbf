package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/durable"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// Warm rounds of a job whose VM is placed on another host, with local
// storage: the volumes are that host's, made and served by its agent for
// the first round's upload (uploadRemote); each later round and the
// cutover's last delta are written through the same exports, over the
// migration network with TLS, under the migration server's upstream
// limit, and read back as on this host.

// ErrRemoteVolumeLost: a volume of a warm job was gone from its target
// host when a later round came to write onto it (its agent created it
// anew, empty). The rounds before are not on it, so the job fails; run
// again, it starts with a full round.
var ErrRemoteVolumeLost = errors.New("the target host had lost the volume written by the earlier precopy rounds")

// liveExports are the exports of the job's volumes on targetHost: those
// this agent knows (from the first round's upload or an earlier round),
// or, with fresh or none known, asked for again (the target host's agent
// may have restarted or stopped serving them; it serves the volumes it
// has again, under new tokens). A volume the target host had to create is
// ErrRemoteVolumeLost.
func (d *Driver) liveExports(ctx context.Context, job *runner.Job, targetHost string, fresh bool) ([]*agentv1.TargetExport, error) {
	marker := lostMarker(job.CacheDir, targetHost)
	if _, err := os.Stat(marker); err == nil {
		return nil, fmt.Errorf("%s: %w", targetHost, ErrRemoteVolumeLost)
	}
	if exports := d.exports.get(job.Name()); exports != nil && !fresh {
		return exports, nil
	}
	exports, err := d.prepareRemote(ctx, job)
	if err != nil {
		return nil, err
	}
	for _, e := range exports {
		if e.GetCreated() {
			// Until the rollback, never write onto the empty volume made
			// instead, even once it exists (and this agent restarted).
			d.exports.set(job.Name(), nil)
			err := fmt.Errorf("disk %s on %s: %w", e.GetSourceDisk(), targetHost, ErrRemoteVolumeLost)
			return nil, errors.Join(err, durable.WriteFile(marker, []byte(err.Error()+"\n"), 0o600))
		}
	}
	return exports, nil
}

// lostMarker is the file in a warm job's cache directory saying that
// targetHost lost a volume the rounds wrote; the rollback removes it.
func lostMarker(cacheDir, targetHost string) string {
	return filepath.Join(cacheDir, "volume-lost-"+path.Base(targetHost))
}

// dialExport connects to disk i's volume through its export on targetHost,
// after the leader confirmed the job may write: write says what.
func (d *Driver) dialExport(ctx context.Context, job *runner.Job, targetHost string, e *agentv1.TargetExport, write string) (*nbd.Client, string, error) {
	dst, err := d.remoteEndpoint(targetHost, e)
	if err != nil {
		return nil, "", err
	}
	if err := fencedOnce(job)(ctx, write); err != nil {
		return nil, "", err
	}
	c, err := dst.dial(ctx, nbd.Options{Logger: job.Log})
	if err != nil {
		return nil, "", fmt.Errorf("connect to %s: %w", dst.Addr, err)
	}
	return c, e.GetSourceDisk() + " on " + targetHost, nil
}

// applyDeltaRemote writes a round's extents onto the volumes targetHost
// serves. A broken attempt (the export gone, the target host's agent
// restarted, the link cut) is tried again with the exports asked for
// anew, within Remote.RetryBudget per outage as the first round's upload;
// a disk whose delta is on its volume, flushed, is not written again.
func (d *Driver) applyDeltaRemote(ctx context.Context, job *runner.Job, targetHost string, todo []runner.DiskDelta, verify bool) (int64, error) {
	vols, err := volumes(job)
	if err != nil {
		return 0, err
	}
	var total int64
	done := map[string]bool{}
	err = d.retryRemote(ctx, job, targetHost, "precopy round", func(ctx context.Context, n int) (bool, error) {
		exports, err := d.liveExports(ctx, job, targetHost, n > 1)
		if err != nil {
			return false, err
		}
		moved := false
		for _, dd := range todo {
			if done[dd.Disk] {
				continue
			}
			i := diskIndex(job, dd.Disk)
			if i < 0 || i >= len(exports) {
				return moved, fmt.Errorf("the job has no disk %s", dd.Disk)
			}
			w, err := d.applyDiskRemote(ctx, job, targetHost, exports[i], vols[i], dd, verify)
			if err != nil {
				return moved, fmt.Errorf("disk %s: %w", dd.Disk, err)
			}
			done[dd.Disk], moved = true, true
			total += w
		}
		return moved, nil
	})
	return total, err
}

// applyDiskRemote writes one disk's delta through its export.
func (d *Driver) applyDiskRemote(ctx context.Context, job *runner.Job, targetHost string, e *agentv1.TargetExport, vol Volume,
	dd runner.DiskDelta, verify bool) (int64, error) {
	c, where, err := d.dialExport(ctx, job, targetHost, e, "write a precopy round onto volume "+vol.Path+" on "+targetHost)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	written, err := writeDelta(ctx, job, dd, c, where, verify)
	if err != nil {
		return 0, err
	}
	return written, c.Disconnect(ctx)
}

// openRemoteSink connects to every volume targetHost serves for the
// cutover's last delta, asking for the exports again as applyDeltaRemote
// does when those known are gone.
func (d *Driver) openRemoteSink(ctx context.Context, job *runner.Job, targetHost string) (runner.DeltaSink, error) {
	vols, err := volumes(job)
	if err != nil {
		return nil, err
	}
	var s *deltaSink
	err = d.retryRemote(ctx, job, targetHost, "opening the volumes for the cutover", func(ctx context.Context, n int) (bool, error) {
		exports, err := d.liveExports(ctx, job, targetHost, n > 1)
		if err != nil {
			return false, err
		}
		disks := job.Assignment.GetJob().GetTarget().GetDisks()
		if len(exports) != len(disks) {
			return false, fmt.Errorf("target host served %d volumes for %d disks", len(exports), len(disks))
		}
		s = &deltaSink{job: job, disks: map[string]*sinkDisk{}}
		for i, disk := range disks {
			c, _, err := d.dialExport(ctx, job, targetHost, exports[i], "write the cutover's delta onto volume "+vols[i].Path+" on "+targetHost)
			if err != nil {
				return false, errors.Join(fmt.Errorf("disk %s: %w", disk.GetSourceDisk(), err), s.Close())
			}
			s.disks[disk.GetSourceDisk()] = &sinkDisk{vol: vols[i], nbd: c}
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}
