package vmware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/types"
)

// PowerDown stops vm: a guest shutdown through VMware Tools first, then a
// power-off when the guest is still running after timeout or Tools cannot
// shut it down. A VM already off is left as it is.
func (c *Conn) PowerDown(ctx context.Context, vm *VM, timeout time.Duration, log *slog.Logger) error {
	obj := object.NewVirtualMachine(c.vim, vm.Ref)
	state, err := obj.PowerState(ctx)
	if err != nil {
		return fmt.Errorf("power state of %s: %w", vm.Name, err)
	}
	switch state {
	case types.VirtualMachinePowerStatePoweredOff:
		log.Info("source VM is already powered off")
		return nil
	case types.VirtualMachinePowerStatePoweredOn:
		done, err := c.shutdownGuest(ctx, obj, timeout, log)
		if done || err != nil {
			return err
		}
	}
	log.Info("powering off the source VM", "state", state)
	task, err := obj.PowerOff(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		// The guest may have finished its shutdown meanwhile.
		if now, serr := obj.PowerState(ctx); serr == nil && now == types.VirtualMachinePowerStatePoweredOff {
			return nil
		}
		return fmt.Errorf("power off %s: %w", vm.Name, err)
	}
	return nil
}

// shutdownGuest asks VMware Tools to shut the guest down and waits up to
// timeout for the VM to power off; done tells it did.
func (c *Conn) shutdownGuest(ctx context.Context, obj *object.VirtualMachine, timeout time.Duration, log *slog.Logger) (done bool, err error) {
	if err := obj.ShutdownGuest(ctx); err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		log.Warn("VMware Tools cannot shut the guest down; powering off", "err", err)
		return false, nil
	}
	log.Info("guest shutdown requested", "timeout", timeout)
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = obj.WaitForPowerState(wctx, types.VirtualMachinePowerStatePoweredOff)
	switch {
	case err == nil:
		log.Info("guest shut down")
		return true, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("guest did not shut down in time", "timeout", timeout)
		return false, nil
	default:
		log.Warn("waiting for the guest shutdown", "err", err)
		return false, nil
	}
}

// watchRound bounds each wait of WatchPowerOn on the server.
const watchRound = 5 * time.Second

// WatchPowerOn returns an error wrapping ErrPoweredOn as soon as vm is
// powered on (at once when it already is), or ctx's error when ctx ends
// first.
//
// Each wait on the server is bounded by watchRound and then begun anew:
// a wait whose connection dropped ends on the server too, instead of
// holding its session until the session expires.
func (c *Conn) WatchPowerOn(ctx context.Context, vm *VM) error {
	var on bool
	var err error
	for !on && err == nil && ctx.Err() == nil {
		filter := new(property.WaitFilter).Add(vm.Ref, vm.Ref.Type, []string{"runtime.powerState"})
		filter.Options = &types.WaitOptions{MaxWaitSeconds: types.NewInt32(int32(watchRound / time.Second))}
		err = property.WaitForUpdates(ctx, property.DefaultCollector(c.vim), filter, func(updates []types.ObjectUpdate) bool {
			for _, u := range updates {
				for _, ch := range u.ChangeSet {
					if s, ok := ch.Val.(types.VirtualMachinePowerState); ok && s == types.VirtualMachinePowerStatePoweredOn {
						on = true
					}
				}
			}
			return on
		})
	}
	if on {
		return fmt.Errorf("%w (%s)", ErrPoweredOn, vm.Name)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		err = errors.New("the watch ended")
	}
	return fmt.Errorf("watch the power state of %s: %w", vm.Name, err)
}
