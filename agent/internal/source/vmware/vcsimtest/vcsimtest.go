// Package vcsimtest runs govmomi's vCenter simulator in-process for the
// VMware driver's tests and the end-to-end tests, with what the
// simulator lacks:
//
//   - a record of every NFC export lease: completed or aborted (with the
//     fault), and the progress updates it got;
//   - NFC downloads that can be cut after some bytes (an export failing
//     midway) or held until released (a job caught in the middle);
//   - a VM whose guest ignores a Tools shutdown until it is powered off;
//   - VMs whose disks are real VMDK files copied into the datastore;
//   - changed-block tracking: QueryChangedDiskAreas answered from what
//     was really written into a disk's files between snapshots (cbt.go),
//     and datastore file GETs counted and held on demand (folder.go).
//
// The snapshot the driver exports is swapped in the simulator's registry
// for a wrapper (exportingSnapshot) whose ExportSnapshot wraps the lease;
// RemoveSnapshot puts the simulator's own object back first, as its code
// expects it. For the same reason a VM must not have a snapshot of its own
// when the driver takes one (the simulator would find the wrapper as the
// parent): such a snapshot is refused with an InvalidState fault naming
// the one in the way (snapguard.go). Only tests import this package.
package vcsimtest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// The simulator's login.
const (
	User     = "administrator@vsphere.local"
	Password = "Ferry-vcsim-1"
)

// nfcPath is where the wrapped leases' disk URLs point.
const nfcPath = "/ferry-nfc/"

// Sim is a running simulator.
type Sim struct {
	Model  *simulator.Model
	Server *simulator.Server
	// URL is the SDK URL with the simulator's user and password.
	URL *url.URL
	// Leases records the NFC leases of exports.
	Leases *LeaseLog

	cut    atomic.Int64 // bytes after which the next NFC GET is cut; 0: none
	star   atomic.Bool  // lease URLs name the host "*"
	ranges atomic.Bool  // NFC GETs honour "Range: bytes=N-"
	hold   atomic.Pointer[chan struct{}]
	gets   atomic.Int64
	seen   sync.Map // snapshots already wrapped
	cbt    *cbt
	folder *folderGets
}

// Start runs a vCenter model (simulator.VPX: one datacenter, a cluster of
// three hosts, a standalone host, four VMs on datastore LocalDS_0) over
// HTTPS on 127.0.0.1, the vCenter reporting its hosts' version. Everything
// ends with the test.
func Start(t testing.TB) *Sim {
	t.Helper()
	return StartWith(t, nil)
}

// StartWith is Start with tweak applied to the model before it is
// created (tweak may be nil).
func StartWith(t testing.TB, tweak func(*simulator.Model)) *Sim {
	t.Helper()
	return start(t, tweak, new(tls.Config))
}

// StartWithCertificate is Start with the server presenting cert instead
// of the simulator's own (a vCenter whose certificate was replaced).
func StartWithCertificate(t testing.TB, cert tls.Certificate) *Sim {
	t.Helper()
	return start(t, nil, &tls.Config{Certificates: []tls.Certificate{cert}})
}

func start(t testing.TB, tweak func(*simulator.Model), tlsConf *tls.Config) *Sim {
	t.Helper()
	m := simulator.VPX()
	if tweak != nil {
		tweak(m)
	}
	if err := m.Create(); err != nil {
		t.Fatalf("vcsim: %v", err)
	}
	s := &Sim{Model: m, Leases: &LeaseLog{leases: map[string]*Lease{}}}
	s.cbt, s.folder = newCBT(s), &folderGets{sim: s}
	s.alignVersions()
	m.Map().AddHandler(&snapshotHook{sim: s})
	m.Map().Handler = s.cbt.handler
	m.Service.HandleFunc(nfcPath, s.serveNFC)
	m.Service.HandleFunc("GET /folder/", s.folder.serve)
	m.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(User, Password)}
	m.Service.TLS = tlsConf
	s.Server = m.Service.NewServer()
	s.URL = s.Server.URL
	t.Cleanup(func() {
		s.Release()
		s.ReleaseFolder()
		s.Server.Close()
		m.Remove()
	})
	return s
}

// Address and Port are where the simulator listens.
func (s *Sim) Address() string { return s.URL.Hostname() }

// Port is the simulator's TCP port.
func (s *Sim) Port() string { return s.URL.Port() }

// User and Password log in to the simulator.
func (s *Sim) User() string { return s.URL.User.Username() }

// Password is the simulator's password.
func (s *Sim) Password() string {
	p, _ := s.URL.User.Password()
	return p
}

// Thumbprint is the SHA-256 thumbprint of the simulator's certificate.
func (s *Sim) Thumbprint() string {
	sum := sha256.Sum256(s.Server.Certificate().Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// Client logs in to the simulator, for the test's own changes.
func (s *Sim) Client(ctx context.Context, t testing.TB) *govmomi.Client {
	t.Helper()
	c, err := govmomi.NewClient(ctx, s.URL, true)
	if err != nil {
		t.Fatalf("vcsim client: %v", err)
	}
	t.Cleanup(func() { _ = c.Logout(context.Background()) })
	return c
}

// CutNFCAfter makes the next NFC download that reaches n bytes end there
// abruptly.
func (s *Sim) CutNFCAfter(n int64) { s.cut.Store(n) }

// HoldNFC makes NFC downloads wait until Release.
func (s *Sim) HoldNFC() {
	ch := make(chan struct{})
	s.hold.Store(&ch)
}

// Release lets held NFC downloads go on.
func (s *Sim) Release() {
	if ch := s.hold.Swap(nil); ch != nil {
		close(*ch)
	}
}

// StarNFCHost makes the disk URLs of later leases name their host "*",
// as an ESXi host's do: the client substitutes the address it connected
// to, so downloads go through a proxy the client talks to. The lease
// record keeps the simulator's real URLs.
func (s *Sim) StarNFCHost() { s.star.Store(true) }

// ServeNFCRanges makes NFC downloads honour "Range: bytes=N-" with a 206
// response from byte N on (the simulator's own handler ignores ranges).
func (s *Sim) ServeNFCRanges() { s.ranges.Store(true) }

// NFCGets counts the NFC downloads that started.
func (s *Sim) NFCGets() int64 { return s.gets.Load() }

func (s *Sim) serveNFC(w http.ResponseWriter, r *http.Request) {
	s.gets.Add(1)
	if ch := s.hold.Load(); ch != nil {
		select {
		case <-*ch:
		case <-r.Context().Done():
			return
		}
	}
	var out http.ResponseWriter = &cutWriter{ResponseWriter: w, cut: &s.cut}
	if from, ok := rangeFrom(r.Header.Get("Range")); ok && s.ranges.Load() && r.Method == http.MethodGet {
		out = &skipWriter{ResponseWriter: out, skip: from, from: from}
	}
	simulator.ServeNFC(out, r)
}

// rangeFrom reads "bytes=N-".
func rangeFrom(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes=")
	if !ok || !strings.HasSuffix(rest, "-") {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(rest, "-"), 10, 64)
	return n, err == nil && n >= 0
}

// skipWriter answers 206 and drops the body's first skip bytes.
type skipWriter struct {
	http.ResponseWriter
	skip, from int64
	started    bool
}

func (w *skipWriter) Write(p []byte) (int, error) {
	if !w.started {
		w.started = true
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-", w.from))
		w.ResponseWriter.WriteHeader(http.StatusPartialContent)
	}
	n := len(p)
	drop := min(int64(len(p)), w.skip)
	w.skip -= drop
	if rest := p[drop:]; len(rest) > 0 {
		if _, err := w.ResponseWriter.Write(rest); err != nil {
			return 0, err
		}
	}
	return n, nil
}

func (w *skipWriter) WriteHeader(code int) {
	if !w.started {
		w.started = true
		if code == http.StatusOK {
			code = http.StatusPartialContent
		}
		w.ResponseWriter.WriteHeader(code)
	}
}

// cutWriter aborts the response when it reaches the armed cut, and
// disarms it.
type cutWriter struct {
	http.ResponseWriter
	cut     *atomic.Int64
	written int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	at := c.cut.Load()
	if at > 0 && c.written+int64(len(p)) >= at && c.cut.CompareAndSwap(at, 0) {
		_, _ = c.ResponseWriter.Write(p[:at-c.written])
		if f, ok := c.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	c.written += int64(len(p))
	return c.ResponseWriter.Write(p)
}

// snapshotHook swaps each new snapshot for an exportingSnapshot.
type snapshotHook struct{ sim *Sim }

func (h *snapshotHook) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "FerryTestHook", Value: "snapshots"}
}

func (h *snapshotHook) PutObject(ctx *simulator.Context, obj mo.Reference) {
	snap, ok := obj.(*simulator.VirtualMachineSnapshot)
	if !ok {
		return
	}
	if _, seen := h.sim.seen.LoadOrStore(snap.Self, true); seen {
		return
	}
	h.sim.cbt.snapshot(ctx, snap)
	ctx.Map.Put(&exportingSnapshot{VirtualMachineSnapshot: snap, sim: h.sim})
}

func (h *snapshotHook) UpdateObject(*simulator.Context, mo.Reference, []types.PropertyChange) {}

func (h *snapshotHook) RemoveObject(*simulator.Context, types.ManagedObjectReference) {}

// exportingSnapshot records the leases of its exports and points their
// disk URLs at the simulator's cuttable NFC handler.
type exportingSnapshot struct {
	*simulator.VirtualMachineSnapshot
	sim *Sim
}

func (s *exportingSnapshot) ExportSnapshot(ctx *simulator.Context, req *types.ExportSnapshot) soap.HasFault {
	res := s.VirtualMachineSnapshot.ExportSnapshot(ctx, req)
	body, ok := res.(*methods.ExportSnapshotBody)
	if !ok || body.Res == nil {
		return res
	}
	ref := body.Res.Returnval
	lease, ok := ctx.Session.Get(ref).(*simulator.HttpNfcLease)
	if !ok {
		return res
	}
	var urls []string
	if lease.Info != nil {
		for i := range lease.Info.DeviceUrl {
			u := &lease.Info.DeviceUrl[i]
			u.Url = strings.Replace(u.Url, "/nfc/", nfcPath, 1)
			urls = append(urls, u.Url)
			if s.sim.star.Load() {
				if p, err := url.Parse(u.Url); err == nil {
					p.Host = "*"
					u.Url = p.String()
				}
			}
		}
	}
	ctx.Session.Put(&recordingLease{HttpNfcLease: lease, log: s.sim.Leases})
	s.sim.Leases.open(ref.Value, urls)
	return res
}

func (s *exportingSnapshot) RemoveSnapshotTask(ctx *simulator.Context, req *types.RemoveSnapshot_Task) soap.HasFault {
	ctx.Map.Put(s.VirtualMachineSnapshot)
	return s.VirtualMachineSnapshot.RemoveSnapshotTask(ctx, req)
}

// recordingLease records how a lease ends.
type recordingLease struct {
	*simulator.HttpNfcLease
	log *LeaseLog
}

func (l *recordingLease) HttpNfcLeaseComplete(ctx *simulator.Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	l.log.end(req.This.Value, LeaseCompleted, "")
	return l.HttpNfcLease.HttpNfcLeaseComplete(ctx, req)
}

func (l *recordingLease) HttpNfcLeaseAbort(ctx *simulator.Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	msg := ""
	if req.Fault != nil {
		msg = req.Fault.LocalizedMessage
	}
	l.log.end(req.This.Value, LeaseAborted, msg)
	return l.HttpNfcLease.HttpNfcLeaseAbort(ctx, req)
}

func (l *recordingLease) HttpNfcLeaseProgress(ctx *simulator.Context, req *types.HttpNfcLeaseProgress) soap.HasFault {
	l.log.progress(req.This.Value, req.Percent)
	return l.HttpNfcLease.HttpNfcLeaseProgress(ctx, req)
}
