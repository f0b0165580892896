# The two commands: `make sweep SIZE=all` (installs what it needs, then runs the default study)
# and `make test`. Everything runs from the repo's own venv (.venv/).
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
VENV_STAMP := .venv/.installed
SIZE ?= all
PRESET ?= cpu
LAUNCHER ?=
VARIANTS ?=
DRY_RUN ?=
ARGS ?=

.PHONY: setup test test-fast sweep sweep-status mlflow-ui bench gpu-check study clean-results

setup: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -e '.[test,scale]'
	touch $(VENV_STAMP)

# Three workers on 2 cores: tests are single-threaded and many wait on the processes they start
# (sweeps, SLURM jobs), so a third keeps both cores busy, and on a shared machine takes a larger
# share (busy 2-core machine: 24.1 min with 2 workers, 22.1 with 3; with 4, 19.8 min but the
# two-process DDP test failed under that load); SLURM tests and tests sharing a module fixture
# stay on one worker each (xdist_group).
test: setup
	$(PY) -m pytest -q -n 3 --dist loadgroup --durations=25

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm"

sweep: setup
	$(PY) -m harness.sweep --preset $(PRESET) --size $(SIZE) \
		$(if $(VARIANTS),--variants $(VARIANTS)) $(if $(LAUNCHER),--launcher $(LAUNCHER)) \
		$(if $(DRY_RUN),--dry-run) $(ARGS)

sweep-status: setup
	$(PY) -m harness.sweep --preset $(PRESET) --size $(SIZE) --status \
		$(if $(VARIANTS),--variants $(VARIANTS)) $(ARGS)

mlflow-ui: setup
	$(PY) -m harness.tracking.ui $(if $(PORT),--port $(PORT))

bench: setup
	$(PY) -m harness.bench

# On one H100/H200-class GPU (about 8 min): bf16 vs fp32, SDPA kernels, compile, MFU, memory vs the
# estimate, sampling speed; writes the GPU section of docs/benchmarks.md. Exit 2 without a GPU.
gpu-check: setup
	$(PY) -m harness.gpu_check $(ARGS)

# The default study end to end, refreshing the committed reference results in docs/results/cpu-study/.
study: setup
	$(PY) -m harness.sweep --preset cpu --size all
	mkdir -p docs/results/cpu-study
	cp results/cpu/runs.csv docs/results/cpu-study/runs.csv
	$(PY) analysis/plot_scaling.py --runs results/cpu/runs.csv --out docs/results/cpu-study
	$(PY) analysis/caption_use.py --runs results/cpu/runs.csv --out docs/results/cpu-study
