package vmdk

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"io"
)

// inflater decompresses grains, reusing its decompressor. VMware and qemu
// write zlib streams (RFC 1950); the specification says deflate (RFC
// 1951), so a grain without a zlib header is read as raw deflate. The
// zlib framing is handled here, with an Adler-32 that sums eight bytes a
// step: the standard library's costs a fifth of the decoding time.
type inflater struct {
	src  bytes.Reader
	fr   io.ReadCloser
	peek [1]byte
	sum  [4]byte
}

var (
	errGrainTooLong = errors.New("inflates to more than a grain")
	errChecksum     = errors.New("zlib checksum mismatch")
	errDictionary   = errors.New("zlib preset dictionary")
)

// inflate decompresses src into dst, which is one grain long, and returns
// the bytes it produced. More than len(dst) bytes is an error.
func (in *inflater) inflate(dst, src []byte) (int, error) {
	isZlib := len(src) >= 2 && src[0]&0x0f == 8 && binary.BigEndian.Uint16(src)%31 == 0
	if isZlib {
		if src[1]&0x20 != 0 {
			return 0, errDictionary
		}
		src = src[2:]
	}
	in.src.Reset(src)
	if in.fr == nil {
		in.fr = flate.NewReader(&in.src)
	} else if err := in.fr.(flate.Resetter).Reset(&in.src, nil); err != nil {
		return 0, err
	}
	n, err := io.ReadFull(in.fr, dst)
	switch {
	case err == io.ErrUnexpectedEOF || err == io.EOF:
	case err != nil:
		return n, err
	default: // dst is full: the deflate stream must end here
		if m, err := in.fr.Read(in.peek[:]); m > 0 {
			return n, errGrainTooLong
		} else if err != io.EOF {
			return n, err
		}
	}
	if !isZlib {
		return n, nil
	}
	if _, err := io.ReadFull(&in.src, in.sum[:]); err != nil {
		return n, io.ErrUnexpectedEOF
	}
	if binary.BigEndian.Uint32(in.sum[:]) != adlerSum(dst[:n]) {
		return n, errChecksum
	}
	return n, nil
}

// adlerSum is RFC 1950's checksum, sixteen bytes a step. Bytes x0..x7,
// y0..y7 add their sum to s1 and 16*s1 + 8*sum(x) + 8*(x0+y0) + 7*(x1+y1)
// + ... + 1*(x7+y7) to s2; with the bytes spread in 16-bit lanes, one
// multiplication gives a weighted sum, another a plain one.
func adlerSum(p []byte) uint32 {
	const (
		mod  = 65521
		nmax = 5552 // bytes before s2 could overflow; a multiple of 16
		lane = 0x00ff00ff00ff00ff
		ones = 0x0001000100010001
		even = 2 | 4<<16 | 6<<32 | 8<<48 // weights of bytes 6, 4, 2, 0
		odd  = 1 | 3<<16 | 5<<32 | 7<<48 // weights of bytes 7, 5, 3, 1
	)
	s1, s2 := uint32(1), uint32(0)
	for len(p) > 0 {
		chunk := p[:min(len(p), nmax)]
		p = p[len(chunk):]
		for ; len(chunk) >= 16; chunk = chunk[16:] {
			x := binary.LittleEndian.Uint64(chunk)
			y := binary.LittleEndian.Uint64(chunk[8:])
			xs := x&lane + x>>8&lane
			e, o := x&lane+y&lane, x>>8&lane+y>>8&lane
			s2 += 16*s1 + 8*uint32((xs*ones)>>48) + uint32((e*even+o*odd)>>48)
			s1 += uint32(((e + o) * ones) >> 48)
		}
		for _, c := range chunk {
			s1 += uint32(c)
			s2 += s1
		}
		s1 %= mod
		s2 %= mod
	}
	return s2<<16 | s1
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
