//go:build !linux || !cgo

package main

// trimCHeap has nothing to trim without glibc's malloc.
func trimCHeap() {}
