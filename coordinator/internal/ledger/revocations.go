package ledger

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Revoked reports whether the certificate with this serial
// (tlsutil.SerialString) is on the revocation list.
func (l *Ledger) Revoked(serial string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.revoked[serial]
	return ok
}

// RevokeCertificate puts c on the revocation list, stamped with now unless
// the leader stamped it. A serial already listed keeps its first entry.
func (l *Ledger) RevokeCertificate(c *ferryv1.RevokedCertificate, now time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.revoked[c.GetSerial()]; ok {
		return []string{old.GetName()}
	}
	c = clone(c)
	if c.RevokeTime == nil {
		c.RevokeTime = timestamppb.New(now)
	}
	l.revoked[c.GetSerial()] = c
	return []string{c.GetName()}
}

// RevokedCertificate returns the entry of serial.
func (l *Ledger) RevokedCertificate(serial string) (*ferryv1.RevokedCertificate, bool) {
	return get(l, l.revoked, serial)
}

// RevokedCertificates returns the revocation list sorted by name.
func (l *Ledger) RevokedCertificates() []*ferryv1.RevokedCertificate {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return filtered(l.revoked, nil)
}
