//go:build linux && cgo

package main

// #include <malloc.h>
import "C"

// trimCHeap hands the free memory of the C heap (libvirt's and libxml2's,
// through cgo) back to the system, which glibc's malloc otherwise keeps
// for later: an idle agent's RSS then comes back down after a job.
func trimCHeap() { C.malloc_trim(0) }
