# Accrue: everything a fresh machine needs goes through this file.
#   make run    create the environment, start the whole mesh, print where to reach it
#   make test   create the environment and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SITE := $(VENV)/lib/python3.11/site-packages
PROTO_FILES := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.stamp
# google/api, google/rpc and google/protobuf protos from the pinned wheels (tools/protodeps.py)
PROTODEPS := .build/protodeps/.stamp
DESCRIPTORS := .build/accrue.binpb

.PHONY: run test browser gen protos-deps descriptors lint fmt bench bench-ingest bench-advance bench-entitlements bench-payments bench-edge clean help

help:
	@echo "make run | make test | make browser | make gen | make protos-deps | make descriptors | make lint | make bench | make bench-ingest | make bench-advance | make bench-entitlements | make bench-payments | make clean"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# our packages live at the repo root (libs, services) and in gen/ (generated code)
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/gen" > $(SITE)/accrue-paths.pth
	touch $(STAMP)

$(GEN_STAMP): $(STAMP) $(PROTO_FILES) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	touch $(GEN_STAMP)

gen: $(GEN_STAMP)

# the include dirs every client generator needs: protos/ and .build/protodeps/
$(PROTODEPS): $(STAMP) tools/protodeps.py
	$(PY) tools/protodeps.py
	touch $(PROTODEPS)

protos-deps: $(PROTODEPS)

# one FileDescriptorSet of every Accrue service with its imports and source info (comments),
# plus google.rpc.Status and the error details: for grpcurl, Postman, dynamic clients, buf generate
$(DESCRIPTORS): $(PROTODEPS) $(PROTO_FILES)
	$(VENV)/bin/buf build --path protos/accrue --path .build/protodeps/google/rpc/status.proto \
		--path .build/protodeps/google/rpc/error_details.proto -o $(DESCRIPTORS)
	@echo "wrote $(DESCRIPTORS)"

descriptors: $(DESCRIPTORS)

run: $(GEN_STAMP)
	$(PY) -m services.run

# Debian's headless Chromium for the checkout-page tests (Playwright drives /usr/bin/chromium;
# nothing is downloaded at test time). Idempotent: nothing happens once it is installed.
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: $(GEN_STAMP) $(PROTODEPS) browser
	GRPC_ENABLE_FORK_SUPPORT=false $(PY) -m pytest

lint: $(GEN_STAMP) $(PROTODEPS)
	$(VENV)/bin/buf lint protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(GEN_STAMP)
	$(PY) -m bench.get_product

# meter-event ingestion (a)-(e), about 4 minutes; BENCH_SECONDS=60 for the sustained runs
bench-ingest: $(GEN_STAMP)
	$(PY) -m bench.ingest --seconds $${BENCH_SECONDS:-20}

bench-advance: $(GEN_STAMP)
	$(PY) -m bench.advance --subscriptions 1000 10000

# entitlement checks: REST and gRPC CheckEntitlement with 32 callers (p50/p99, req/s),
# and the delay from an event's 202 to the balance; about 1 minute
bench-entitlements: $(GEN_STAMP)
	$(PY) -m bench.entitlements --seconds $${BENCH_SECONDS:-10}

bench-payments: $(GEN_STAMP)
	$(PY) -m bench.payments --payments $${BENCH_PAYMENTS:-50}

# single-event 202 latency at an edge (NATS leaf node) beside the central gateway, same run
bench-edge: $(GEN_STAMP)
	$(PY) -m bench.edge --events $${BENCH_EVENTS:-1000}

clean:
	rm -rf gen .build .accrue .pytest_cache .mypy_cache
