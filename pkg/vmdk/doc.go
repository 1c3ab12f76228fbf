// Package vmdk reads VMware virtual disks in pure Go, for the VMware
// source's CONVERTING phase: a disk becomes data extents for the pipeline,
// its holes and zero grains never read nor written.
//
// Three readers cover the formats an export or a datastore delivers:
//
//   - StreamReader reads a sparse extent front to back from an io.Reader,
//     as an NFC export streams it: streamOptimized (deflate-compressed
//     grains behind grain markers, grain tables and directory behind their
//     grains, the footer holding the directory's offset, the end-of-stream
//     marker) and monolithicSparse, whose tables come first. Next yields the
//     data runs; CopyStream writes them into a Sink, inflating on several
//     goroutines while the stream is read in order.
//   - SparseReader reads a hosted sparse extent (monolithicSparse, or a
//     streamOptimized file at rest) with random access: Extents from the
//     grain tables, ReadAt from the grains.
//   - Disk reads a descriptor file's extents end to end: FLAT and VMFS
//     files (raw data at an offset), SPARSE files, ZERO runs. It covers
//     monolithicFlat, vmfs (thin, thick or eager-zeroed: the flat file is
//     raw), and the split twoGbMaxExtentFlat and twoGbMaxExtentSparse.
//
// SparseReader and Disk have the pipeline Source's methods but for the
// extent type, which converts (pipeline.Extent(e)); a pipeline Sink is a
// Sink.
//
// Not read, with ErrUnsupported saying why: delta disks (a parent CID or
// file name: snapshots to consolidate first), vmfsSparse (COWD) and
// seSparse extents, raw device mappings, and layouts a stream cannot be
// read in without seeking back. Input that breaks the format is
// ErrCorrupt, a *CorruptError with the byte offset at fault; input that is
// no VMDK is ErrNotVMDK. Sizes are bounded (grains of at most 1 MiB, 512
// entries per grain table, 64 TiB disks) so hostile input costs bounded
// memory; the readers are fuzzed.
//
// The format is VMware's "Virtual Disk Format 5.0"; qemu's block/vmdk.c
// was read for the details real files differ in.
package vmdk
