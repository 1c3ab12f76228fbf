# Ferry's build, checks and tests. `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(PATH):/usr/local/go/bin
MAKEFLAGS += --no-print-directory

GO ?= go
BIN ?= bin
# Whole-suite limits; CI gives a run 90 minutes in all.
UNIT_TIMEOUT ?= 35m
INTEGRATION_TIMEOUT ?= 40m
BENCHTIME ?= 1s
BENCH ?= .
# Build tags of the binaries (pkg/testenv.BuildTags, which tests that build
# them use too): grpcnotrace leaves out gRPC's x/net/trace and with it
# html/template, whose reflection keeps every exported method of every type
# in the binary (the agent's mapped image is 6.5 MiB larger with it).
BUILD_TAGS ?= grpcnotrace

.PHONY: all help build build-deps generate lint-proto check check-files check-tidy deps test unit fuzz-short test-integration bench demo clean

all: build

## help: this list
help:
	@sed -n 's/^## //p' $(firstword $(MAKEFILE_LIST))

## build: the three binaries into bin/ (installs what cgo needs first: scripts/deps.sh build)
build: build-deps
	@pkgs=(); for d in coordinator/cmd agent/cmd; do if [[ -d $$d ]]; then pkgs+=("./$$d/..."); fi; done; \
	mains=(); if (( $${#pkgs[@]} > 0 )); then \
		mains=($$($(GO) list -e -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' "$${pkgs[@]}" 2>/dev/null)); fi; \
	if (( $${#mains[@]} == 0 )); then echo "build: no commands under coordinator/cmd or agent/cmd yet"; exit 0; fi; \
	mkdir -p $(BIN); \
	echo "$(GO) build -tags '$(BUILD_TAGS)' -o $(BIN)/ $${mains[*]}"; \
	$(GO) build -tags '$(BUILD_TAGS)' -o $(BIN)/ "$${mains[@]}"

# build-deps: Go, gcc and libvirt's headers for cgo; a no-op where they are.
build-deps:
	@scripts/deps.sh build

## generate: Go code from proto/ into pkg/pb (stale files removed)
generate:
	$(GO) tool buf generate --clean

## lint-proto: buf lint (STANDARD and comment rules, but two; see buf.yaml)
lint-proto:
	$(GO) tool buf lint

## check-breaking: buf breaking (FILE rules) of proto/ against the frozen image proto/frozen.json
check-breaking:
	@echo "check: buf breaking against proto/frozen.json"
	@$(GO) tool buf breaking --against proto/frozen.json || { \
		echo "check: proto/ breaks what proto/frozen.json froze; add a field or method instead (see docs/development.md, Changing the protos)" >&2; exit 1; }

## freeze-api: write proto/frozen.json, the image check-breaking compares against (at a release only)
freeze-api:
	$(GO) tool buf build --exclude-source-info -o -#format=json | python3 -m json.tool --indent 1 >proto/frozen.json

## check: tracked files, buf lint, buf breaking, go.mod/go.sum tidy, generated-code drift, gofmt, go vet, import boundaries
check: check-files build-deps lint-proto check-breaking check-tidy
	@echo "check: generated code"; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(GO) tool buf generate -o "$$tmp"; \
	if ! diff -r pkg/pb "$$tmp/pkg/pb"; then \
		echo "check: pkg/pb is out of date with proto/; run 'make generate' and commit" >&2; exit 1; fi
	@echo "check: gofmt"; \
	bad=$$(find . -name '*.go' -not -path './.git/*' -print0 | xargs -0 -r gofmt -l); \
	if [[ -n "$$bad" ]]; then echo "check: not gofmt-ed (run gofmt -w):" >&2; echo "$$bad" >&2; exit 1; fi
	@echo "check: go vet"; \
	$(GO) vet ./... && $(GO) vet -tags integration ./...
	@scripts/check-imports.sh
	@scripts/check-layout.sh

## check-files: no tracked executable binary (ELF, Mach-O, PE, ar) nor file over 1 MiB, but for .ci/allowed-files
MAX_FILE_BYTES := 1048576
check-files:
	@echo "check: tracked files"; \
	allow=(); while read -r a _; do [[ -z $$a || $$a == \#* ]] || allow+=("$$a"); done <.ci/allowed-files; \
	bad=0; \
	while IFS=' ' read -r -d '' size f; do \
		for a in "$${allow[@]}"; do if [[ $$f == $$a ]]; then continue 2; fi; done; \
		if (( size > $(MAX_FILE_BYTES) )); then \
			echo "check: $$f is $$size bytes, over 1 MiB" >&2; bad=1; fi; \
		magic=; LC_ALL=C read -r -n 4 -d '' magic <"$$f" || true; \
		case $$magic in \
		$$'\x7fELF'*) kind=ELF ;; $$'\xfe\xed\xfa'* | $$'\xce\xfa\xed\xfe' | $$'\xcf\xfa\xed\xfe') kind=Mach-O ;; \
		MZ*) kind=PE ;; '!<ar') kind='ar archive' ;; *) kind= ;; esac; \
		if [[ -n $$kind ]]; then echo "check: $$f is an executable binary ($$kind)" >&2; bad=1; fi; \
	done < <(git ls-files -z | xargs -0 -r stat --printf '%s %n\0' 2>/dev/null); \
	if (( bad )); then echo "check: build output and large files stay out of git (git rm --cached them; test data that must be tracked goes in .ci/allowed-files)" >&2; exit 1; fi

## check-tidy: go.mod and go.sum are what go mod tidy writes (see scripts/tidy-diff.awk)
check-tidy:
	@echo "check: go mod tidy"; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	if $(GO) mod tidy -e -diff >"$$tmp/diff" 2>"$$tmp/err"; then exit 0; fi; \
	grep -oE '[^:@[:space:]]+@[^:@/[:space:]]+:' "$$tmp/err" | tr -d : | sort -u >"$$tmp/unavailable" || true; \
	if [[ -s "$$tmp/diff" ]] && awk -v unavailable="$$tmp/unavailable" -f scripts/tidy-diff.awk "$$tmp/diff" >"$$tmp/verdict"; then \
		echo "check: go mod tidy: tidy; go.sum keeps the lines of modules not served now:" $$(cat "$$tmp/unavailable"); exit 0; fi; \
	grep -v '^go: downloading' "$$tmp/err" >&2 || true; cat "$$tmp/verdict" >&2 || true; \
	echo "check: go.mod/go.sum are not tidy; run 'go mod tidy' and commit" >&2; exit 1

## deps: Debian packages and Go modules (scripts/deps.sh, idempotent)
deps:
	scripts/deps.sh

## test: deps, check, unit tests, short fuzzing, integration tests (what CI runs)
test:
	$(MAKE) deps
	$(MAKE) check
	$(MAKE) unit
	$(MAKE) fuzz-short
	$(MAKE) test-integration

## unit: go test ./...
unit: build-deps
	$(GO) test -count=1 -timeout $(UNIT_TIMEOUT) ./...

## fuzz-short: every fuzz target of FUZZ_PKGS for FUZZTIME executions each
# A count, not a duration: a duration's deadline can fail a target that
# found nothing (golang/go#75804, in go1.26), and a count does the same
# work on a fast or a loaded machine.
FUZZTIME ?= 50000x
FUZZ_PKGS ?= ./pkg/vmdk ./pkg/nbd ./pkg/plan
fuzz-short:
	@for pkg in $(FUZZ_PKGS); do \
		for fz in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$pkg/*_test.go | cut -c6-); do \
			echo "$(GO) test -run '^$$' -fuzz '^$$fz\$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 100x $$pkg"; \
			$(GO) test -run '^$$' -fuzz "^$$fz\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 100x $$pkg; \
		done; \
	done

## test-integration: the packages with tests built with -tags integration
test-integration:
	@pkgs=$$( { grep -rlE --include='*_test.go' '^//go:build .*\bintegration\b' . || true; } | xargs -r -n1 dirname | sort -u); \
	if [[ -z "$$pkgs" ]]; then echo "test-integration: no integration tests yet"; exit 0; fi; \
	echo "$(GO) test -tags integration -count=1 -timeout $(INTEGRATION_TIMEOUT)" $$pkgs; \
	$(GO) test -tags integration -count=1 -timeout $(INTEGRATION_TIMEOUT) $$pkgs

## bench: every benchmark (BENCH=regexp, BENCHTIME=1s|100x); results also in bin/bench.txt
# coordinator/internal/bench holds measurement runs that set up once and ignore
# b.N: they run once each (-benchtime 1x), whatever BENCHTIME says. The data
# path's (agent/internal/pipeline, agent/e2e) take minutes: hence the timeout.
bench:
	@mkdir -p $(BIN)
	@pkgs=$$($(GO) list -e ./... | grep -v '/coordinator/internal/bench$$'); { \
		$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -benchmem -count=1 -timeout 40m $$pkgs; \
		$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 1x -count=1 -timeout 20m ./coordinator/internal/bench; \
	} | tee $(BIN)/bench.txt

## demo: a real migration on this machine (installs what it needs, builds, runs scripts/demo.sh)
demo:
	scripts/demo.sh

## clean: remove bin/
clean:
	rm -rf $(BIN)
