# sabench: `make bench` sets up and runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed here, pinned, and only when the venv has none, so a build already in
# the venv (CPU or the CUDA one fitting your driver) is kept. On Linux the default index
# serves torch as a multi-GB CUDA build: on a CPU-only machine pre-install the CPU wheel
# in the venv first, as .github/workflows/pr.yml does (python3 -m venv .venv &&
# .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu).
# On a GPU machine set TORCH_SPEC to the build that fits your CUDA (e.g. TORCH_SPEC="torch").
TORCH_SPEC ?= torch==2.13.0
# SUITE=name overrides the default: llama-3.1-8b where CUDA is available, smoke otherwise
# (decided after install, when the venv's torch can tell).
SUITE ?=

.PHONY: install test bench inspect baseline clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

bench: install
	suite="$(SUITE)"; [ -n "$$suite" ] || suite=$$($(PY) -c "import torch; print('llama-3.1-8b' if torch.cuda.is_available() else 'smoke')"); \
	$(VENV)/bin/sabench run "$$suite"

inspect: install
	$(VENV)/bin/sabench inspect --model llama-3.1-8b --variant baseline --variant cla:2 --variant sa:23-30 --seq-len 8192

# Re-record the smoke baseline that CI checks deterministic figures against (after an
# intended change to parameters, cache sizes or FLOPs; commit the new file with the change).
baseline: install
	rm -rf /tmp/sabench-baseline && $(VENV)/bin/sabench run smoke --out /tmp/sabench-baseline --no-report
	cp /tmp/sabench-baseline/results.json reports/baselines/smoke.json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
