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

.PHONY: run test gen lint fmt bench bench-ingest clean help

help:
	@echo "make run | make test | make gen | make lint | make bench | make bench-ingest | make clean"

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

run: $(GEN_STAMP)
	$(PY) -m services.run

test: $(GEN_STAMP)
	$(PY) -m pytest

lint: $(GEN_STAMP)
	rm -rf .build/protodeps && mkdir -p .build/protodeps/google
	cp -r $(SITE)/google/api .build/protodeps/google/api
	cp -r $(SITE)/grpc_tools/_proto/google/protobuf .build/protodeps/google/protobuf
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

clean:
	rm -rf gen .build .accrue .pytest_cache .mypy_cache
