package api

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const (
	maxParallelism = 1000
	// Bounds of guest_shutdown_timeout: a guest needs a moment, and a job
	// should not wait for one longer than a day.
	minGuestShutdown = time.Second
	maxGuestShutdown = 24 * time.Hour
)

// settingsFields are the paths UpdateSettings accepts, in proto order.
var settingsFields = []string{"job_parallelism", "cache_retention", "host_allocation_strategy", "agent_grace_period",
	"inventory_sync_interval", "guest_shutdown_timeout", "precopy_interval"}

// Bounds of inventory_sync_interval.
const (
	minSyncInterval = time.Second
	maxSyncInterval = 24 * time.Hour
)

// settingsService is ferry.v1.SettingsService.
type settingsService struct {
	ferryv1.UnimplementedSettingsServiceServer
	a *API
}

func (s *settingsService) GetSettings(ctx context.Context, _ *ferryv1.GetSettingsRequest) (*ferryv1.Settings, error) {
	return s.a.ledger.Settings(), nil
}

func (s *settingsService) UpdateSettings(ctx context.Context, req *ferryv1.UpdateSettingsRequest) (*ferryv1.Settings, error) {
	st, err := s.update(ctx, req)
	return reply(ctx, s.a, st, err)
}

// update merges the fields named in update_mask into the current
// settings. Without a mask, the fields set to non-zero values change.
func (s *settingsService) update(ctx context.Context, req *ferryv1.UpdateSettingsRequest) (*ferryv1.Settings, error) {
	in := req.GetSettings()
	if in == nil {
		return nil, invalid("settings", "required: the new values, with update_mask naming the fields to change")
	}
	paths, err := settingsPaths(req)
	if err != nil {
		return nil, err
	}
	s.a.settingsMu.Lock()
	defer s.a.settingsMu.Unlock()
	st := s.a.ledger.Settings()
	c := &checker{}
	for _, p := range paths {
		mergeSetting(c, p, in, st)
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	// settings.etag, when set, is checked as the command applies (and by
	// the leader before proposing), against the settings then stored.
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutSettings{PutSettings: &ledgerv1.PutSettings{Settings: st, Etag: in.GetEtag()}}}
	if _, err := s.a.propose(ctx, cmd); err != nil {
		return nil, etagField(err, "settings.etag")
	}
	return s.a.ledger.Settings(), nil
}

// settingsPaths validates the mask by name; "*" means every field.
func settingsPaths(req *ferryv1.UpdateSettingsRequest) ([]string, error) {
	mask := req.GetUpdateMask().GetPaths()
	if len(mask) == 0 {
		return setSettings(req.GetSettings())
	}
	c := &checker{}
	var paths []string
	for i, p := range mask {
		field := fmt.Sprintf("update_mask.paths[%d]", i)
		switch {
		case p == "*":
			paths = append(paths, settingsFields...)
		case p == "name":
			c.add(field, "name is output only")
		case slices.Contains(settingsFields, p):
			paths = append(paths, p)
		default:
			c.add(field, "unknown field %q; settings has %s", p, strings.Join(settingsFields, ", "))
		}
	}
	return paths, c.err()
}

func setSettings(in *ferryv1.Settings) ([]string, error) {
	var paths []string
	if in.GetJobParallelism() != 0 {
		paths = append(paths, "job_parallelism")
	}
	if in.GetCacheRetention() != nil {
		paths = append(paths, "cache_retention")
	}
	if in.GetHostAllocationStrategy() != 0 {
		paths = append(paths, "host_allocation_strategy")
	}
	if in.GetAgentGracePeriod() != nil {
		paths = append(paths, "agent_grace_period")
	}
	if in.GetInventorySyncInterval() != nil {
		paths = append(paths, "inventory_sync_interval")
	}
	if in.GetGuestShutdownTimeout() != nil {
		paths = append(paths, "guest_shutdown_timeout")
	}
	if in.GetPrecopyInterval() != nil {
		paths = append(paths, "precopy_interval")
	}
	if len(paths) == 0 {
		return nil, invalid("update_mask", "nothing to change: name the fields in update_mask (%s)", strings.Join(settingsFields, ", "))
	}
	return paths, nil
}

// mergeSetting checks one field of in and copies it into st.
func mergeSetting(c *checker, path string, in, st *ferryv1.Settings) {
	field := "settings." + path
	switch path {
	case "job_parallelism":
		if n := in.GetJobParallelism(); n < 1 || n > maxParallelism {
			c.add(field, "must be 1 to %d, got %d", maxParallelism, n)
		}
		st.JobParallelism = in.GetJobParallelism()
	case "cache_retention":
		checkPositive(c, field, in.GetCacheRetention())
		st.CacheRetention = in.GetCacheRetention()
	case "host_allocation_strategy":
		checkEnum(c, field, in.GetHostAllocationStrategy(), true)
		st.HostAllocationStrategy = in.GetHostAllocationStrategy()
	case "agent_grace_period":
		checkPositive(c, field, in.GetAgentGracePeriod())
		st.AgentGracePeriod = in.GetAgentGracePeriod()
	case "inventory_sync_interval":
		checkPositive(c, field, in.GetInventorySyncInterval())
		if d := in.GetInventorySyncInterval().AsDuration(); d > 0 && (d < minSyncInterval || d > maxSyncInterval) {
			c.add(field, "must be %s to %s, got %s", minSyncInterval, maxSyncInterval, d)
		}
		st.InventorySyncInterval = in.GetInventorySyncInterval()
	case "guest_shutdown_timeout":
		d := in.GetGuestShutdownTimeout()
		checkPositive(c, field, d)
		if d.CheckValid() == nil && d.AsDuration() > 0 && (d.AsDuration() < minGuestShutdown || d.AsDuration() > maxGuestShutdown) {
			c.add(field, "must be %s to %s, got %s", minGuestShutdown, maxGuestShutdown, d.AsDuration())
		}
		st.GuestShutdownTimeout = d
	case "precopy_interval":
		checkPrecopyInterval(c, field, in.GetPrecopyInterval(), true)
		st.PrecopyInterval = in.GetPrecopyInterval()
	}
}

// checkPrecopyInterval checks a warm job's time between rounds: at least
// ledger.MinPrecopyInterval; unset only when !required.
func checkPrecopyInterval(c *checker, field string, d *durationpb.Duration, required bool) {
	if d == nil && !required {
		return
	}
	checkPositive(c, field, d)
	if d.CheckValid() == nil && d.AsDuration() > 0 && d.AsDuration() < ledger.MinPrecopyInterval {
		c.add(field, "must be at least %s, got %s", ledger.MinPrecopyInterval, d.AsDuration())
	}
}

func checkPositive(c *checker, field string, d *durationpb.Duration) {
	switch {
	case d == nil:
		c.add(field, "required: a positive duration")
	case d.CheckValid() != nil:
		c.add(field, "not a valid duration: %v", d.CheckValid())
	case d.AsDuration() <= 0:
		c.add(field, "must be positive, got %s", d.AsDuration())
	}
}
