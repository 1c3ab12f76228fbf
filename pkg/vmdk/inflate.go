package vmdk

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"io"
)

// inflater decompresses grains, reusing its decompressors. VMware and
// qemu write zlib streams (RFC 1950); the specification says deflate
// (RFC 1951), so a grain without a zlib header is read as raw deflate.
type inflater struct {
	src  bytes.Reader
	zr   io.ReadCloser
	fr   io.ReadCloser
	peek [1]byte
}

var errGrainTooLong = errors.New("inflates to more than a grain")

// inflate decompresses src into dst, which is one grain long, and returns
// the bytes it produced. More than len(dst) bytes is an error.
func (in *inflater) inflate(dst, src []byte) (int, error) {
	in.src.Reset(src)
	r, err := in.reader(src)
	if err != nil {
		return 0, err
	}
	n, err := io.ReadFull(r, dst)
	switch {
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		return n, nil
	case err != nil:
		return n, err
	}
	// dst is full: the stream must end here (and zlib checks its sum).
	if m, err := r.Read(in.peek[:]); m > 0 {
		return n, errGrainTooLong
	} else if err != nil && err != io.EOF {
		return n, err
	}
	return n, nil
}

func (in *inflater) reader(src []byte) (io.Reader, error) {
	if len(src) >= 2 && src[0]&0x0f == 8 && binary.BigEndian.Uint16(src)%31 == 0 {
		if in.zr == nil {
			zr, err := zlib.NewReader(&in.src)
			if err != nil {
				return nil, err
			}
			in.zr = zr
			return zr, nil
		}
		return in.zr, in.zr.(zlib.Resetter).Reset(&in.src, nil)
	}
	if in.fr == nil {
		in.fr = flate.NewReader(&in.src)
		return in.fr, nil
	}
	return in.fr, in.fr.(flate.Resetter).Reset(&in.src, nil)
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
