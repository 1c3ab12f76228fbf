package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A proto3 string must be UTF-8. gRPC's own codec refuses a request that
// is not with INTERNAL "error unmarshalling request", naming no field,
// before any interceptor runs. The API's codec instead finds the field
// and leaves a note the interceptors turn into INVALID_ARGUMENT naming
// it, like every other malformed field.

// ServerOption makes s decode requests with the API's codec. Messages
// outside ferry.v1 (the agent stream) decode exactly as before.
func (a *API) ServerOption() grpc.ServerOption {
	return grpc.ForceServerCodec(textCodec{a: a})
}

type textCodec struct{ a *API }

var _ encoding.Codec = textCodec{}

func (textCodec) Name() string { return "proto" }

func (textCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal: %T is not a proto message", v)
	}
	return proto.Marshal(m)
}

func (c textCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("unmarshal: %T is not a proto message", v)
	}
	err := proto.Unmarshal(data, m)
	var bad interface{ InvalidUTF8() bool }
	if err == nil || !errors.As(err, &bad) || !bad.InvalidUTF8() {
		return err
	}
	md := m.ProtoReflect().Descriptor()
	if !strings.HasPrefix(string(md.FullName()), "ferry.v1.") {
		return err
	}
	field := badUTF8Field(data, md, "")
	if field == "" {
		return err
	}
	proto.Reset(m)
	c.a.badText.Store(v, field)
	return nil
}

// refuseBadText answers INVALID_ARGUMENT when the codec found a string
// that is not UTF-8 in req.
func (a *API) refuseBadText(ctx context.Context, req any) error {
	field, ok := a.badText.LoadAndDelete(req)
	if !ok {
		return nil
	}
	return a.toStatus(ctx, invalid(field.(string), "not valid UTF-8"))
}

// textCheckedStream refuses a streamed request that is not UTF-8.
type textCheckedStream struct {
	grpc.ServerStream
	a *API
}

func (s textCheckedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.a.refuseBadText(s.Context(), m)
}

// badUTF8Field returns the path ("jobs[2].target.vm_name") of the first
// string field of the encoded message that is not UTF-8, "" if none.
func badUTF8Field(b []byte, md protoreflect.MessageDescriptor, prefix string) string {
	counts := map[protowire.Number]int{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return ""
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		path := prefix + string(fd.Name())
		if fd.IsList() {
			path = fmt.Sprintf("%s[%d]", path, counts[num])
			counts[num]++
		}
		switch {
		case fd.Kind() == protoreflect.StringKind && !utf8.Valid(v):
			return path
		case fd.Kind() == protoreflect.MessageKind: // map entries too
			if p := badUTF8Field(v, fd.Message(), path+"."); p != "" {
				return p
			}
		}
	}
	return ""
}
