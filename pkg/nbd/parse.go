package nbd

import (
	"encoding/binary"
	"math"
	"math/bits"
	"sort"
)

// The parsers in this file are pure functions over byte slices so that they
// can be fuzzed without a connection. They never panic on any input.

var be = binary.BigEndian

// optReply is the fixed header of an option reply.
type optReply struct {
	option uint32
	typ    uint32
	length uint32
}

func (r optReply) isErr() bool { return r.typ&repErrBit != 0 }

// parseOptReplyHeader parses the 20-byte header of an option reply.
func parseOptReplyHeader(b []byte) (optReply, error) {
	if len(b) != optReplyHdrLen {
		return optReply{}, protocolErr("option reply header of %d bytes", len(b))
	}
	if m := be.Uint64(b); m != magicOptReply {
		return optReply{}, protocolErr("option reply magic %#x", m)
	}
	r := optReply{option: be.Uint32(b[8:]), typ: be.Uint32(b[12:]), length: be.Uint32(b[16:])}
	if r.length > maxOptReplyLen {
		return optReply{}, protocolErr("option reply of %d bytes", r.length)
	}
	return r, nil
}

// exportInfo is what the handshake learns about the export.
type exportInfo struct {
	size          uint64
	flags         uint16
	haveExport    bool
	haveBlockSize bool
	bs            BlockSize
}

// parseInfo applies one NBD_REP_INFO payload to info. Unknown information
// types are ignored, as the spec requires.
func parseInfo(p []byte, info *exportInfo) error {
	if len(p) < 2 {
		return protocolErr("NBD_REP_INFO of %d bytes", len(p))
	}
	switch typ := be.Uint16(p); typ {
	case infoExport:
		if len(p) != 12 {
			return protocolErr("NBD_INFO_EXPORT of %d bytes", len(p))
		}
		info.size, info.flags, info.haveExport = be.Uint64(p[2:]), be.Uint16(p[10:]), true
	case infoBlockSize:
		if len(p) != 14 {
			return protocolErr("NBD_INFO_BLOCK_SIZE of %d bytes", len(p))
		}
		bs := BlockSize{Min: be.Uint32(p[2:]), Preferred: be.Uint32(p[6:]), Max: be.Uint32(p[10:])}
		if err := bs.validate(); err != nil {
			return err
		}
		info.bs, info.haveBlockSize = bs, true
	}
	return nil
}

func (bs BlockSize) validate() error {
	if bs.Min == 0 || bs.Min&(bs.Min-1) != 0 || bs.Min > 1<<16 {
		return protocolErr("minimum block size %d", bs.Min)
	}
	if bs.Preferred < bs.Min || bs.Max < bs.Min {
		return protocolErr("block sizes min %d preferred %d max %d", bs.Min, bs.Preferred, bs.Max)
	}
	return nil
}

// parseMetaContext parses an NBD_REP_META_CONTEXT payload.
func parseMetaContext(p []byte) (id uint32, name string, err error) {
	if len(p) < 4 {
		return 0, "", protocolErr("NBD_REP_META_CONTEXT of %d bytes", len(p))
	}
	return be.Uint32(p), string(p[4:]), nil
}

// chunkHeader is the header of a structured reply chunk.
type chunkHeader struct {
	flags  uint16
	typ    uint16
	cookie uint64
	length uint32
}

func (h chunkHeader) done() bool { return h.flags&replyFlagDone != 0 }

// parseSimpleHeader parses the 16-byte header of a simple reply.
func parseSimpleHeader(b []byte) (errno uint32, cookie uint64, err error) {
	if len(b) != simpleHeaderLen || be.Uint32(b) != magicSimpleReply {
		return 0, 0, protocolErr("bad simple reply header")
	}
	return be.Uint32(b[4:]), be.Uint64(b[8:]), nil
}

// parseChunkHeader parses the 20-byte header of a structured reply chunk and
// checks that its length suits its type.
func parseChunkHeader(b []byte) (chunkHeader, error) {
	if len(b) != chunkHeaderLen || be.Uint32(b) != magicStructReply {
		return chunkHeader{}, protocolErr("bad structured reply header")
	}
	h := chunkHeader{flags: be.Uint16(b[4:]), typ: be.Uint16(b[6:]), cookie: be.Uint64(b[8:]), length: be.Uint32(b[16:])}
	ok := true
	switch {
	case h.typ == chunkNone:
		ok = h.length == 0 && h.done()
	case h.typ == chunkOffsetData:
		ok = h.length >= 9
	case h.typ == chunkOffsetHole:
		ok = h.length == 12
	case h.typ == chunkBlockStatus:
		ok = h.length >= 12 && (h.length-4)%8 == 0 && h.length <= maxStatusChunkLen
	case h.typ&chunkErrBit != 0:
		ok = h.length >= 6 && h.length <= maxErrorChunkLen
	default:
		return chunkHeader{}, protocolErr("unknown reply chunk type %d", h.typ)
	}
	if !ok {
		return chunkHeader{}, protocolErr("reply chunk type %d with length %d flags %#x", h.typ, h.length, h.flags)
	}
	return h, nil
}

// chunkErr is the content of an error chunk.
type chunkErr struct {
	errno  uint32
	msg    string
	offset uint64
	hasOff bool
}

// parseErrorChunk parses the payload of an error chunk of type typ. Unknown
// error types share the errno and message layout of NBD_REPLY_TYPE_ERROR.
func parseErrorChunk(typ uint16, p []byte) (chunkErr, error) {
	if len(p) < 6 {
		return chunkErr{}, protocolErr("error chunk of %d bytes", len(p))
	}
	e := chunkErr{errno: be.Uint32(p)}
	if e.errno == 0 {
		e.errno = EINVAL // the spec forbids zero; an error it still is
	}
	msgLen := int(be.Uint16(p[4:]))
	fixed := 6
	if typ == chunkErrorOffset {
		fixed = 14
	}
	if len(p) < fixed || msgLen > len(p)-fixed {
		return chunkErr{}, protocolErr("error chunk message of %d bytes in %d", msgLen, len(p))
	}
	e.msg = string(p[6 : 6+msgLen])
	if typ == chunkErrorOffset {
		e.offset, e.hasOff = be.Uint64(p[6+msgLen:]), true
	}
	return e, nil
}

// parseOffsetHole parses the payload of an NBD_REPLY_TYPE_OFFSET_HOLE chunk.
func parseOffsetHole(p []byte) (off uint64, size uint32, err error) {
	if len(p) != 12 {
		return 0, 0, protocolErr("hole chunk of %d bytes", len(p))
	}
	off, size = be.Uint64(p), be.Uint32(p[8:])
	if size == 0 {
		return 0, 0, protocolErr("hole chunk of zero length")
	}
	return off, size, nil
}

// checkWithin reports whether [off, off+n) lies inside [reqOff, reqOff+reqLen)
// with n > 0, without overflowing.
func checkWithin(reqOff uint64, reqLen uint32, off, n uint64) bool {
	if n == 0 || off < reqOff {
		return false
	}
	end, carry := bits.Add64(off, n, 0)
	return carry == 0 && end <= reqOff+uint64(reqLen)
}

// parseBlockStatus parses an NBD_REPLY_TYPE_BLOCK_STATUS payload whose
// extents start at base. It returns the context ID and the extents with
// absolute offsets. Every extent has a nonzero length and ends at or
// before 2^63-1, so End never overflows.
func parseBlockStatus(p []byte, base uint64) (uint32, []Extent, error) {
	if len(p) < 12 || (len(p)-4)%8 != 0 {
		return 0, nil, protocolErr("block status chunk of %d bytes", len(p))
	}
	id := be.Uint32(p)
	n := (len(p) - 4) / 8
	exts := make([]Extent, 0, n)
	off := base
	for i := 0; i < n; i++ {
		d := p[4+8*i:]
		length, flags := uint64(be.Uint32(d)), be.Uint32(d[4:])
		if length == 0 {
			return 0, nil, protocolErr("block status extent %d of zero length", i)
		}
		if off+length > math.MaxInt64 {
			return 0, nil, protocolErr("block status extent %d ends past 2^63-1", i)
		}
		exts = append(exts, Extent{Offset: int64(off), Length: int64(length), Flags: flags})
		off += length
	}
	return id, exts, nil
}

// spans tracks which parts of a read's range reply chunks have covered, as
// sorted disjoint half-open intervals, merging neighbours that touch.
// Chunks usually arrive in order, so the slice stays one element long.
type spans struct {
	iv    [][2]uint64
	total uint64
}

// add records [lo, hi) and reports false if it overlaps what is recorded.
func (s *spans) add(lo, hi uint64) bool {
	if hi <= lo {
		return false
	}
	i := sort.Search(len(s.iv), func(i int) bool { return s.iv[i][1] > lo })
	if i < len(s.iv) && s.iv[i][0] < hi {
		return false
	}
	s.total += hi - lo
	joinPrev := i > 0 && s.iv[i-1][1] == lo
	joinNext := i < len(s.iv) && s.iv[i][0] == hi
	switch {
	case joinPrev && joinNext:
		s.iv[i-1][1] = s.iv[i][1]
		s.iv = append(s.iv[:i], s.iv[i+1:]...)
	case joinPrev:
		s.iv[i-1][1] = hi
	case joinNext:
		s.iv[i][0] = lo
	default:
		s.iv = append(s.iv, [2]uint64{})
		copy(s.iv[i+1:], s.iv[i:])
		s.iv[i] = [2]uint64{lo, hi}
	}
	return true
}
