# Two commands a newcomer needs: `make reproduce` (PROFILE=cpu by default) and `make test`.
# Both create .venv from nothing when it is missing.
PROFILE ?= cpu
SETTING ?= *
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help setup reproduce report test smoke bench lab clean clean-runs run-setting-%
.DEFAULT_GOAL := help

help:
	@echo "make reproduce    run every notebook at PROFILE=$(PROFILE) into results/$(PROFILE)/ and regenerate REPORT.md"
	@echo "make test         unit tests (tests/) and every notebook at smoke scale under nbval"
	@echo "make smoke        make reproduce PROFILE=smoke (seconds)"
	@echo "make report       regenerate REPORT.md from results/$(PROFILE)/"
	@echo "make bench        measured costs (ratios timed in one process) into results/$(PROFILE)/bench.json, then REPORT.md"
	@echo "make lab          JupyterLab on this repository with the disback kernel (LAB_PORT=8888)"
	@echo "make setup        create .venv with the package, its dev tools and the disback Jupyter kernel"
	@echo "make clean        remove runs/ and results/smoke/"
	@echo "make clean-runs   empty runs/$(PROFILE)/ (the shared runs; time a full reproduction from none)"
	@echo "variables: PROFILE=smoke|cpu|paper (default cpu), SETTING=ring2d|digits, JOBS=2"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name disback --display-name "disback (.venv)"
	touch $(STAMP)

# Every params/$(PROFILE)/NN_name__<setting>.yaml runs notebooks/NN_name.ipynb into results/$(PROFILE)/notebooks/.
# Settings are independent: they run side by side (one process and one thread each, which is what these
# small nets want on a 2-core machine; two threads per process on a busy machine are many times slower).
# SETTING=ring2d (or digits) runs one setting only.
SETTINGS = $(sort $(foreach p,$(wildcard params/$(PROFILE)/*__*.yaml),$(lastword $(subst __, ,$(basename $(notdir $(p)))))))
RUN_SETTINGS = $(if $(filter-out *,$(SETTING)),$(SETTING),$(SETTINGS))
JOBS ?= 2

reproduce: setup
	@test -n "$(RUN_SETTINGS)" || { echo "no parameter files in params/$(PROFILE)/"; exit 2; }
	@mkdir -p results/$(PROFILE)/notebooks
	$(MAKE) --no-print-directory -j$(JOBS) $(addprefix run-setting-,$(RUN_SETTINGS)) PROFILE=$(PROFILE)
	$(MAKE) --no-print-directory report PROFILE=$(PROFILE)

run-setting-%:
	@for p in $(sort $(wildcard params/$(PROFILE)/*__$*.yaml)); do \
	  stem=$$(basename $$p .yaml); nb=$${stem%%__*}; \
	  echo "== $$stem"; \
	  $(PY) -m disback.params notebooks/$$nb.ipynb $$p || exit 1; \
	  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/papermill --no-progress-bar -k disback --cwd notebooks \
	    -f $$p -p profile $(PROFILE) notebooks/$$nb.ipynb results/$(PROFILE)/notebooks/$$stem.ipynb \
	    > results/$(PROFILE)/notebooks/$$stem.log 2>&1 || { tail -30 results/$(PROFILE)/notebooks/$$stem.log; exit 1; }; \
	done

report: setup
	$(PY) -m disback.report --results results --profile $(PROFILE) --out REPORT.md

# The wall time lands in results/test_time.json (git-ignored), which `make bench` quotes.
test: setup
	@start=$$(date +%s); \
	$(PY) -m pytest tests && \
	$(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-kernel-name disback notebooks; rc=$$?; \
	$(PY) -m disback.bench --results results --record-test-time $$(( $$(date +%s) - start )) --test-rc $$rc; \
	exit $$rc

bench: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m disback.bench --profile $(PROFILE) --results results
	$(MAKE) --no-print-directory report PROFILE=$(PROFILE)

# JupyterLab on the repository, new notebooks on the disback kernel; LAB_ARGS passes more options (--no-browser).
LAB_PORT ?= 8888
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --ServerApp.port=$(LAB_PORT) \
	  --MappingKernelManager.default_kernel_name=disback $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

smoke:
	$(MAKE) reproduce PROFILE=smoke

clean:
	rm -rf runs results/smoke

# Runs are shared and reused across notebooks (README); start from none to time a full reproduction.
clean-runs:
	rm -rf runs/$(PROFILE)
