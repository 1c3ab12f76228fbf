package vcsimtest

import (
	"net/http"
	"sync/atomic"
)

// folderGets wraps the simulator's datastore file access (/folder/...,
// which honours Range requests through http.FileServer): it counts the
// GETs and the bytes they served, and can hold them or cut one short.
type folderGets struct {
	sim   *Sim
	gets  atomic.Int64
	bytes atomic.Int64
	cut   atomic.Int64 // bytes after which the next GET is cut; 0: none
	hold  atomic.Pointer[chan struct{}]
	// held is closed when a GET starts waiting on hold.
	held atomic.Pointer[chan struct{}]
}

// FolderGets counts the datastore file GETs that started.
func (s *Sim) FolderGets() int64 { return s.folder.gets.Load() }

// FolderBytes counts the bytes datastore file GETs served.
func (s *Sim) FolderBytes() int64 { return s.folder.bytes.Load() }

// CutFolderAfter makes the next datastore file GET that reaches n bytes
// end there abruptly.
func (s *Sim) CutFolderAfter(n int64) { s.folder.cut.Store(n) }

// HoldFolder makes datastore file GETs wait until ReleaseFolder; the
// channel returned is closed when the first one waits.
func (s *Sim) HoldFolder() <-chan struct{} {
	hold, held := make(chan struct{}), make(chan struct{})
	s.folder.held.Store(&held)
	s.folder.hold.Store(&hold)
	return held
}

// ReleaseFolder lets held datastore file GETs go on.
func (s *Sim) ReleaseFolder() {
	if ch := s.folder.hold.Swap(nil); ch != nil {
		close(*ch)
	}
}

func (f *folderGets) serve(w http.ResponseWriter, r *http.Request) {
	f.gets.Add(1)
	if ch := f.hold.Load(); ch != nil {
		if held := f.held.Swap(nil); held != nil {
			close(*held)
		}
		select {
		case <-*ch:
		case <-r.Context().Done():
			return
		}
	}
	f.sim.Model.Service.ServeDatastore(&cutWriter{ResponseWriter: &countingWriter{ResponseWriter: w, n: &f.bytes}, cut: &f.cut}, r)
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}
