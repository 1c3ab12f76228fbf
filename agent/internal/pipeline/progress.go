package pipeline

import (
	"context"
	"fmt"
	"time"
)

// saveLoop makes completed chunks durable every SaveInterval, or sooner
// when SaveBytes have been written, until the workers are done.
func (c *copier) saveLoop(ctx context.Context, workersDone <-chan struct{}) error {
	cp := c.opts.Checkpoint
	if cp == nil {
		return nil
	}
	interval := cp.SaveInterval
	if interval <= 0 {
		interval = DefaultSaveInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-workersDone:
			return nil
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-c.kick:
		}
		if err := c.save(ctx); err != nil {
			return err
		}
	}
}

// save flushes the sink, then marks done the chunks completed before the
// flush was sent.
func (c *copier) save(ctx context.Context) error {
	cp := c.opts.Checkpoint
	chunks, n := cp.takePending()
	if len(chunks) == 0 {
		cp.saved(n)
		return nil
	}
	if err := c.dst.Flush(ctx); err != nil {
		cp.giveBack(chunks, n)
		return fmt.Errorf("copy: flush: %w", err)
	}
	if err := cp.commit(chunks); err != nil {
		cp.giveBack(chunks, n)
		return err
	}
	cp.saved(n)
	if f := feedOf(c.feedPath); f != nil {
		f.notifySaved()
	}
	return nil
}

// reportLoop calls Progress every progressEvery while the copy runs.
func (c *copier) reportLoop(ctx context.Context, workersDone <-chan struct{}) {
	if c.opts.Progress == nil {
		return
	}
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		select {
		case <-workersDone:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			c.report()
		}
	}
}

func (c *copier) report() {
	if c.opts.Progress != nil {
		c.opts.Progress(c.skipped+c.copied.Load(), c.total)
	}
}
