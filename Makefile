# Two entry points (see README): `make run` and `make test`. Both create .venv
# and install once; the stamp file skips installs that are already done.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
# Torch is pinned to the build this machine class serves from local disk
# (a CUDA build that also runs on CPU); pyproject.toml keeps ranges.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

# The main job: the default strategy comparison, offline, with 95% CIs and plots.
run: $(STAMP)
	$(BIN)/fedmoe-sim compare --experiment digits-quick --seeds 0,1,2 --out results/main

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/sim_speed.py

clean:
	rm -rf $(VENV) results .pytest_cache
