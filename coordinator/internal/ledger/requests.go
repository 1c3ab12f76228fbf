package ledger

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// Bounds of the request_id records: a record expires RequestTTL of ledger
// time (the leader-stamped command times, never a replica's clock) after
// it was made, and the ledger keeps at most MaxRequests, dropping the
// oldest. Both are applied when a record is made, so every replica keeps
// the same records.
const (
	RequestTTL  = 24 * time.Hour
	MaxRequests = 10000
)

// replay answers a command stamped with a request_id seen before: the
// names it acted on when the method and target match (done is true and
// nothing is applied again), ErrRequestReused when they do not. A record
// older than RequestTTL at now is not seen.
func (l *Ledger) replay(r *ledgerv1.RequestStamp, now time.Time) (names []string, done bool, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.replayLocked(r, now)
}

func (l *Ledger) replayLocked(r *ledgerv1.RequestStamp, now time.Time) ([]string, bool, error) {
	rec, ok := l.requests[r.GetRequestId()]
	if !ok || r.GetRequestId() == "" || expired(rec, now) {
		return nil, false, nil
	}
	if err := SameRequest(rec, r.GetMethod(), r.GetTarget()); err != nil {
		return nil, false, err
	}
	return append([]string(nil), rec.GetNames()...), true, nil
}

// SameRequest checks that a record was made by method on target, and
// names what it was made by when not.
func SameRequest(rec *ledgerv1.RequestRecord, method, target string) error {
	if rec.GetMethod() == method && slices.Equal(rec.GetNames(), []string{target}) {
		return nil
	}
	by := "a create of " + strings.Join(rec.GetNames(), ", ")
	if rec.GetMethod() != "" {
		by = rec.GetMethod() + " on " + strings.Join(rec.GetNames(), ", ")
	}
	return fmt.Errorf("%w: %q was already used by %s", ErrRequestReused, rec.GetRequestId(), by)
}

func expired(rec *ledgerv1.RequestRecord, now time.Time) bool {
	return !now.Before(rec.GetTime().AsTime().Add(RequestTTL))
}

// recordCall remembers that the stamped request applied.
func (l *Ledger) recordCall(r *ledgerv1.RequestStamp, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.requests[r.GetRequestId()] = &ledgerv1.RequestRecord{
		RequestId: r.GetRequestId(), Method: r.GetMethod(), Names: []string{r.GetTarget()}, Time: timestamppb.New(now),
	}
	l.pruneRequests(now)
}

// pruneRequests drops the records expired at now; then, beyond
// MaxRequests, the oldest (by time, then request_id) down to nine tenths
// of it, so that a full table is sorted once per thousand records, not at
// every one. The caller holds l.mu. oldestRequest, the time of the oldest
// record when known (zero after a restore), spares the scan when nothing
// can have expired; what is dropped does not depend on it.
func (l *Ledger) pruneRequests(now time.Time) {
	if now.Before(l.oldestRequest) {
		l.oldestRequest = now // a record just made at now (leader clocks differ)
	}
	if !l.oldestRequest.IsZero() && now.Before(l.oldestRequest.Add(RequestTTL)) && len(l.requests) <= MaxRequests {
		return
	}
	l.oldestRequest = time.Time{}
	for id, rec := range l.requests {
		t := rec.GetTime().AsTime()
		switch {
		case expired(rec, now):
			delete(l.requests, id)
		case l.oldestRequest.IsZero() || t.Before(l.oldestRequest):
			l.oldestRequest = t
		}
	}
	if len(l.requests) <= MaxRequests {
		return
	}
	recs := make([]*ledgerv1.RequestRecord, 0, len(l.requests))
	for _, rec := range l.requests {
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, func(a, b *ledgerv1.RequestRecord) int {
		if c := a.GetTime().AsTime().Compare(b.GetTime().AsTime()); c != 0 {
			return c
		}
		return strings.Compare(a.GetRequestId(), b.GetRequestId())
	})
	keep := MaxRequests * 9 / 10
	for _, rec := range recs[:len(recs)-keep] {
		delete(l.requests, rec.GetRequestId())
	}
	l.oldestRequest = recs[len(recs)-keep].GetTime().AsTime()
}

// RequestRecord returns the record of a request ID, if there is one that
// has not expired at now.
func (l *Ledger) RequestRecord(id string, now time.Time) (*ledgerv1.RequestRecord, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	rec, ok := l.requests[id]
	if !ok || id == "" || expired(rec, now) {
		return nil, false
	}
	return clone(rec), true
}

// etagged is a resource with an AIP-154 etag.
type etagged interface {
	proto.Message
	GetEtag() string
}

// ETag is the etag of a stored resource: the first 128 bits of the
// SHA-256 of its deterministic encoding without the etag, in hex. Every
// replica computes the same one from the same ledger.
func ETag[T etagged](m T) string {
	c := clone(m)
	c.ProtoReflect().Clear(c.ProtoReflect().Descriptor().Fields().ByName("etag"))
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		// A message built from Go values always marshals.
		panic(fmt.Sprintf("etag of %T: %v", m, err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// checkETag refuses a conditional update whose etag no longer matches
// the stored resource; an empty etag is unconditional.
func checkETag[T etagged](what string, stored T, etag string) error {
	if etag == "" {
		return nil
	}
	if cur := ETag(stored); cur != etag {
		return fmt.Errorf("%w: %s changed since etag %q was read (it is now %q); read it again and retry", ErrAborted, what, etag, cur)
	}
	return nil
}
