package main

import (
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
)

// releaseAgain is how long after a job's end the memory is released a
// second time: what the job's last reports and the upload's clean-up
// freed after the first release is otherwise kept until the heap grows.
const releaseAgain = 5 * time.Second

// releaseMemory is the runner's ReleaseMemory, with the C heap's free
// memory handed back too, now and once more a little later.
func releaseMemory() {
	release := func() { runner.ReleaseMemory(); trimCHeap() }
	release()
	time.AfterFunc(releaseAgain, release)
}
