package nbd

// Wire constants of the NBD protocol (doc/proto.md of the NBD project).
// Only the compact (non-extended) headers are spoken.

const (
	magicNBD         = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt    = 0x49484156454f5054 // "IHAVEOPT"
	magicOldstyle    = 0x00420281861253
	magicOptReply    = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimpleReply = 0x67446698
	magicStructReply = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	hsFixedNewstyle = 1 << 0
	hsNoZeroes      = 1 << 1

	clientFixedNewstyle = 1 << 0
	clientNoZeroes      = 1 << 1
)

// Option types.
const (
	optExportName      = 1
	optAbort           = 2
	optStartTLS        = 5
	optGo              = 7
	optStructuredReply = 8
	optSetMetaContext  = 10
)

// Option reply types. Errors have bit 31 set.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4

	repErrBit           = 1 << 31
	repErrUnsup         = repErrBit | 1
	repErrPolicy        = repErrBit | 2
	repErrInvalid       = repErrBit | 3
	repErrPlatform      = repErrBit | 4
	repErrTLSReqd       = repErrBit | 5
	repErrUnknown       = repErrBit | 6
	repErrShutdown      = repErrBit | 7
	repErrBlockSizeReqd = repErrBit | 8
	repErrTooBig        = repErrBit | 9
	repErrExtHeaderReqd = repErrBit | 10
)

// Information types of NBD_REP_INFO.
const (
	infoExport    = 0
	infoName      = 1
	infoDesc      = 2
	infoBlockSize = 3
)

// Command types.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Structured reply flags and chunk types. Error chunk types have bit 15 set.
const (
	replyFlagDone = 1 << 0

	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkErrBit      = 1 << 15
	chunkError       = chunkErrBit | 1
	chunkErrorOffset = chunkErrBit | 2
)

// Sizes of fixed wire structures.
const (
	requestHeaderLen = 28
	simpleHeaderLen  = 16
	chunkHeaderLen   = 20
	optReplyHdrLen   = 20
)

// Limits the client enforces on what a server may send, so that a broken or
// hostile server cannot make it allocate without bound.
const (
	maxOptReplyLen    = 1 << 20
	maxErrorChunkLen  = 4096 + 64
	maxStatusChunkLen = 4 + 8*(1<<20) + 8 // the spec's 2^20 extents, plus slack
	defaultMaxPayload = 32 << 20          // 2^25, the interoperable read/write size
	maxEffectLen      = 1<<32 - 1         // 32-bit length field of a request
	defaultMaxFlight  = 32
)

// Names used in error messages.
var cmdNames = map[uint16]string{
	cmdRead:        "read",
	cmdWrite:       "write",
	cmdDisc:        "disconnect",
	cmdFlush:       "flush",
	cmdTrim:        "trim",
	cmdWriteZeroes: "write-zeroes",
	cmdBlockStatus: "block-status",
}

var optNames = map[uint32]string{
	optExportName:      "NBD_OPT_EXPORT_NAME",
	optAbort:           "NBD_OPT_ABORT",
	optStartTLS:        "NBD_OPT_STARTTLS",
	optGo:              "NBD_OPT_GO",
	optStructuredReply: "NBD_OPT_STRUCTURED_REPLY",
	optSetMetaContext:  "NBD_OPT_SET_META_CONTEXT",
}

var repErrNames = map[uint32]string{
	repErrUnsup:         "NBD_REP_ERR_UNSUP",
	repErrPolicy:        "NBD_REP_ERR_POLICY",
	repErrInvalid:       "NBD_REP_ERR_INVALID",
	repErrPlatform:      "NBD_REP_ERR_PLATFORM",
	repErrTLSReqd:       "NBD_REP_ERR_TLS_REQD",
	repErrUnknown:       "NBD_REP_ERR_UNKNOWN",
	repErrShutdown:      "NBD_REP_ERR_SHUTDOWN",
	repErrBlockSizeReqd: "NBD_REP_ERR_BLOCK_SIZE_REQD",
	repErrTooBig:        "NBD_REP_ERR_TOO_BIG",
	repErrExtHeaderReqd: "NBD_REP_ERR_EXT_HEADER_REQD",
}
