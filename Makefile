# gatehouse — development entry points. `make serve` and `make test` work on a
# fresh clone with only Python >= 3.11 and make: they create .venv, install
# the package (which generates the gRPC code from protos/), then run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
GEN    := src/gatehouse/v1/.generated-stamp
CLIENT := clients/python
CLIENT_GEN := $(CLIENT)/src/gatehouse_client/_pb/.generated-stamp
PROTOS := $(wildcard protos/gatehouse/v1/*.proto)

.PHONY: serve test pytest lint gen bench soak clean test-grpc-range fuzz faults

# The server and the Python client (clients/python), both editable.
$(STAMP): pyproject.toml setup.py $(CLIENT)/pyproject.toml $(CLIENT)/setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev,tracing]' -e $(CLIENT)
	touch $@

$(GEN): $(PROTOS) tools/genproto.py $(STAMP)
	$(BIN)/python tools/genproto.py
	touch $@

$(CLIENT_GEN): $(PROTOS) $(CLIENT)/build_protos.py $(STAMP)
	$(BIN)/python $(CLIENT)/build_protos.py
	touch $@

gen: $(GEN) $(CLIENT_GEN)

serve: $(GEN)
	$(BIN)/gatehouse serve $(ARGS)

lint: gen
	$(BIN)/ruff check src tests bench tools $(CLIENT)
	$(BIN)/mypy

pytest: gen
	$(BIN)/python -m pytest $(ARGS)

test: lint pytest

# The fault suite alone (also part of `test`), printing what each scenario saw and
# how long recovery took (docs/reliability/faults.md).
faults: $(GEN)
	$(BIN)/python -m pytest -s tests/faults $(ARGS)

# Not part of `test`: throwaway venvs with the lowest and the highest allowed
# grpcio stack (tools/grpc-range/), each running the transport and e2e tests.
test-grpc-range:
	$(PYTHON) tools/grpc_range.py $(ARGS)

# Not part of `test`: the fuzzers (gRPC edge, loaders, policies) and the differential
# tests against a naive evaluator, with many more examples than `make test` runs; see
# docs/reliability/fuzzing.md and docs/reliability/differential.md.
FUZZ_EXAMPLES ?= 500
fuzz: $(GEN)
	GATEHOUSE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -rA tests/fuzz \
		tests/policy/test_hostile_input.py $(ARGS)
	GATEHOUSE_DIFF_EXAMPLES=$${GATEHOUSE_DIFF_EXAMPLES:-5000} $(BIN)/python -m pytest -q \
		tests/differential $(ARGS)

bench: $(GEN)
	$(BIN)/python bench/check_inprocess.py $(ARGS)

# Not part of `test`: 10 minutes of mixed traffic at 70 % of measured peak
# against a real server on a private Redis (bench/soak.py; docs/reliability/soak.md).
# Shorter: make soak ARGS="--minutes 2"
soak: $(GEN)
	$(BIN)/python bench/soak.py $(ARGS)

clean:
	rm -rf $(VENV) src/gatehouse/v1 build *.egg-info src/*.egg-info \
	  $(CLIENT)/src/gatehouse_client/_pb $(CLIENT)/build $(CLIENT)/src/*.egg-info
