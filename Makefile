# Parley's developer commands. Every tool is pinned in tools/go.mod and run
# with `go tool`, so nothing needs installing by hand besides Go.
SHELL := bash
GO ?= go
TOOL := $(GO) tool -modfile=tools/go.mod
# The protovalidate rules' schema comes from its Go module, never from a registry.
PROTOVALIDATE_VERSION := v1.2.2
PROTO_DEPS := .build/proto-deps
TEST_FLAGS ?= -race -count=1 -timeout 30m

.PHONY: all test fuzz-smoke azurite standardwebhooks tokensource-deps node-sdk-deps lint fmt vet staticcheck buf-lint generate proto-deps check-generated build run dev bench bench-scale e2e clean web-deps e2e-web

all: lint test

## test: run every test (starts private PostgreSQL, Valkey and Azurite servers as needed)
test: azurite standardwebhooks tokensource-deps node-sdk-deps
	$(GO) test $(TEST_FLAGS) ./...

## fuzz-smoke: run every fuzz target (func FuzzX in a _test.go) for FUZZTIME, one at a time
# `go test ./...` (make test) runs their seeds and testdata/fuzz corpora as
# ordinary tests; this runs the fuzzer itself briefly. A failing input is
# written to the target's testdata/fuzz: commit it with the fix. A run that
# ends in "context deadline exceeded" with no failing input is the fuzzer's
# time running out inside a slow input, not a finding.
FUZZTIME ?= 5s
fuzz-smoke:
	@mkdir -p .build; set -e; for f in $$(grep -rlE --include='*_test.go' --exclude-dir=node_modules --exclude-dir=.build --exclude-dir=tools '^func Fuzz[A-Za-z0-9_]*\(' . | sort); do \
	  for t in $$(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p' "$$f"); do \
	    echo "fuzz $$t ($$(dirname $$f), $(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) "$$(dirname $$f)" >.build/fuzz.log 2>&1 || { \
	      if ! grep -q 'Failing input written' .build/fuzz.log && grep -q 'context deadline exceeded' .build/fuzz.log; then \
	        echo "  (go's fuzzer ended inside an input when the time ran out and wrote no failing input: not a finding)"; \
	      else cat .build/fuzz.log; exit 1; fi; }; \
	  done; \
	done

## azurite: install the Azurite blob emulator the tests start (pinned in tools/azurite)
azurite: tools/azurite/node_modules/.package-lock.json

tools/azurite/node_modules/.package-lock.json: tools/azurite/package.json tools/azurite/package-lock.json
	npm ci --prefix tools/azurite --no-audit --no-fund

## standardwebhooks: install the Standard Webhooks reference library the webhook tests verify deliveries with (pinned in tools/standardwebhooks)
standardwebhooks: tools/standardwebhooks/node_modules/.package-lock.json

tools/standardwebhooks/node_modules/.package-lock.json: tools/standardwebhooks/package.json tools/standardwebhooks/package-lock.json
	npm ci --prefix tools/standardwebhooks --no-audit --no-fund --ignore-scripts

## tokensource-deps: install the pinned livekit-client whose TokenSource.endpoint cmd/parley's TestTokenSourceEndpoint runs against Parley
tokensource-deps: cmd/parley/testdata/tokensource/node_modules/.package-lock.json

cmd/parley/testdata/tokensource/node_modules/.package-lock.json: cmd/parley/testdata/tokensource/package.json cmd/parley/testdata/tokensource/package-lock.json
	npm ci --prefix cmd/parley/testdata/tokensource --no-audit --no-fund --ignore-scripts

## node-sdk-deps: install sdk/node's pinned @livekit/agents and TypeScript, which cmd/parley's TestLiveKitAgentsNodeSession compiles and runs against Parley
node-sdk-deps: sdk/node/node_modules/.package-lock.json

sdk/node/node_modules/.package-lock.json: sdk/node/package.json sdk/node/package-lock.json
	npm ci --prefix sdk/node --no-audit --no-fund --ignore-scripts

## lint: formatting, vet, staticcheck, buf lint and freshness of generated code
lint: fmt vet staticcheck buf-lint check-generated

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(TOOL) staticcheck ./...

$(PROTO_DEPS)/buf/validate/validate.proto:
	@mkdir -p $(PROTO_DEPS)/buf/validate
	@dir=$$($(GO) mod download -json github.com/bufbuild/protovalidate@$(PROTOVALIDATE_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  test -n "$$dir" || { echo "could not download github.com/bufbuild/protovalidate@$(PROTOVALIDATE_VERSION)"; exit 1; }; \
	  install -m 0644 "$$dir/proto/protovalidate/buf/validate/validate.proto" $@

# google/api/{annotations,http}.proto (the REST paths' google.api.http
# options) come from the npm package google-proto-files, pinned in tools/googleapis.
GOOGLEAPIS := tools/googleapis/node_modules/google-proto-files

tools/googleapis/node_modules/.package-lock.json: tools/googleapis/package.json tools/googleapis/package-lock.json
	npm ci --prefix tools/googleapis --no-audit --no-fund --ignore-scripts

$(PROTO_DEPS)/google/api/%.proto: tools/googleapis/node_modules/.package-lock.json
	@mkdir -p $(@D)
	install -m 0644 $(GOOGLEAPIS)/google/api/$*.proto $@

proto-deps: $(PROTO_DEPS)/buf/validate/validate.proto $(PROTO_DEPS)/google/api/annotations.proto $(PROTO_DEPS)/google/api/http.proto

buf-lint: proto-deps
	$(TOOL) buf lint

## generate: regenerate internal/gen and examples/web/src/gen from proto/ with pinned local plugins
generate: proto-deps web-deps
	$(TOOL) buf generate

check-generated: generate
	@git diff --exit-code --stat -- internal/gen examples/web/src/gen sdk/node/src/gen || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- internal/gen examples/web/src/gen sdk/node/src/gen); if [ -n "$$untracked" ]; then echo "untracked generated files: $$untracked"; exit 1; fi

## web-deps: install examples/web's pinned npm packages (protoc-gen-es, Vite, playwright-core)
web-deps: examples/web/node_modules/.package-lock.json

examples/web/node_modules/.package-lock.json: examples/web/package.json examples/web/package-lock.json
	npm ci --prefix examples/web --no-audit --no-fund

## e2e-web: build examples/web and drive it with Chromium against a real Parley (needs /usr/bin/chromium, PostgreSQL, Valkey)
e2e-web: web-deps
	npm run --prefix examples/web build
	@mkdir -p .build/e2e-web
	CGO_ENABLED=0 $(GO) build -o .build/e2e-web/parley ./cmd/parley
	CGO_ENABLED=0 $(GO) build -o .build/e2e-web/agent ./examples/agent
	PARLEY_BIN=$(CURDIR)/.build/e2e-web/parley PARLEY_AGENT_BIN=$(CURDIR)/.build/e2e-web/agent PARLEY_E2E_OUT=$(CURDIR)/.build/e2e-web \
	  timeout 300 node examples/web/e2e/run.mjs

## e2e: three replicas behind a round-robin balancer: a full session, then rolling SIGTERM and SIGKILL restarts under load
# The suite carries the e2e build tag, so `go test ./...` (make test) neither
# builds nor runs it; the summary line is printed with -v.
e2e: azurite
	@mkdir -p .build/e2e
	PARLEY_E2E_OUT=$(CURDIR)/.build/e2e $(GO) test -tags e2e -count=1 -timeout 20m -v ./e2e/...

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/parley ./cmd/parley

## bench: measure Parley against pgbench running the same SQL (about 12 minutes; writes bench/RESULTS.md)
bench:
	cd bench && $(GO) test -tags bench -run '^TestBench$$' -count=1 -timeout 40m -v . -args -bench.out=RESULTS.md

## bench-scale: SaveTurn and ListMessages with 10 thousand and 10 million stored messages (writes bench/RESULTS-scale.md)
bench-scale:
	cd bench && $(GO) test -tags bench -run '^TestBenchScale$$' -count=1 -timeout 40m -v . -args -bench.out=RESULTS-scale.md

## dev: run Parley locally with nothing configured
dev run:
	$(GO) run ./cmd/parley dev

clean:
	rm -rf .build bin
