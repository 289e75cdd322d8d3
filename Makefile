# Two commands for a new user: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
TORCH  := torch==2.13.0

.PHONY: install test lint proto bench soak demo clean

SOAK_SECONDS ?= 600

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so the project's range never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	@touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Regenerate the gRPC code from the contract (committed; a test fails when it is stale).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)
	$(BIN)/python benchmarks/collect_speed.py

# A longer load and fault run against a real server; not part of CI.
soak: $(STAMP)
	PYTHONPATH=tests:tests/reliability $(BIN)/python scripts/soak.py --duration $(SOAK_SECONDS)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) build *.egg-info
