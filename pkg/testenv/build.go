package testenv

// BuildTags are the build tags of Ferry's binaries: the Makefile's
// BUILD_TAGS, which tests that build the binaries themselves pass to go
// build too, so that what they measure is what `make build` ships.
//
// grpcnotrace leaves out gRPC's golang.org/x/net/trace (off unless
// grpc.EnableTracing is set, which Ferry never does). That package brings
// html/template and text/template, whose calls of reflect's Method make
// the linker keep every exported method of every type a binary can reach:
// with govmomi's thousands of vim25 types the agent's mapped text and
// read-only data grow by 6.5 MiB, and an idle agent's RSS by 8 MiB.
// (ferry-coordinator links html/template anyway, through net/rpc of
// hashicorp/go-msgpack; the tag still drops x/net/trace there.)
const BuildTags = "grpcnotrace"
