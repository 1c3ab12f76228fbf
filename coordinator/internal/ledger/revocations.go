package ledger

// Revoked reports whether the certificate with this serial
// (tlsutil.SerialString) is on the revocation list.
func (l *Ledger) Revoked(serial string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.revoked[serial]
	return ok
}
