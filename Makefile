# Two commands a newcomer needs: `make reproduce` (PROFILE=cpu by default) and `make test`.
# Both create .venv from nothing when it is missing.
PROFILE ?= cpu
# The profile whose runs and REPORT.md a profile uses: cpu_extra builds on cpu (its params: base_profile: cpu).
BASE_PROFILE = $(if $(filter cpu_extra,$(PROFILE)),cpu,$(PROFILE))
SETTING ?= *
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help setup reproduce report test smoke bench lab clean clean-runs convert-teacher download
.DEFAULT_GOAL := help

help:
	@echo "make reproduce    run every notebook at PROFILE=$(PROFILE) into results/$(PROFILE)/ and regenerate REPORT.md"
	@echo "make test         unit tests (tests/) and every notebook at smoke scale under nbval"
	@echo "make smoke        make reproduce PROFILE=smoke (seconds)"
	@echo "make reproduce PROFILE=cpu_extra   after make reproduce: 04's four methods on digits, 05's for both settings (~65 min)"
	@echo "make report       regenerate REPORT.md from results/$(PROFILE)/"
	@echo "make bench        measured costs (ratios timed in one process) into results/$(PROFILE)/bench.json, then REPORT.md"
	@echo "make lab          JupyterLab on this repository with the disback kernel (LAB_PORT=8888)"
	@echo "make setup        create .venv with the package, its dev tools and the disback Jupyter kernel"
	@echo "make clean        remove runs/ and results/smoke/"
	@echo "make clean-runs   empty runs/$(PROFILE)/ (the shared runs; time a full reproduction from none)"
	@echo "make convert-teacher PKL=... OUT=...  convert a downloaded EDM pickle to safetensors (safe loader)"
	@echo "make download     paper scale: EDM teachers (converted), FID references, Inception weights into ASSETS"
	@echo "variables: PROFILE=smoke|cpu|cpu_extra|paper (default cpu), SETTING=ring2d|digits|ffhq64|afhqv2_64|imagenet64|sd15|sdxl (one setting), JOBS=2,"
	@echo "           ASSETS=<folder> (paper-scale asset cache; default \$$DISBACK_ASSETS, else ~/.cache/disback)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name disback --display-name "disback (.venv)"
	touch $(STAMP)

# Every params/$(PROFILE)/NN_name__<setting>.yaml runs notebooks/NN_name.ipynb into results/$(PROFILE)/notebooks/.
# Each executed notebook is a make target that depends on the notebooks whose records or runs it reads (same
# setting), so `make -j2` keeps both cores busy across settings and notebooks; one process and one torch thread
# each, which is what these small nets want on a 2-core machine. SETTING=ring2d (or digits) runs one setting only.
# Progress (notebook, run, elapsed and remaining time) is printed from runs/$(PROFILE)/progress.log.
SETTINGS = $(sort $(foreach p,$(wildcard params/$(PROFILE)/*__*.yaml),$(lastword $(subst __, ,$(basename $(notdir $(p)))))))
RUN_SETTINGS = $(if $(filter-out *,$(SETTING)),$(SETTING),$(SETTINGS))
JOBS ?= 2
# The paper-scale asset cache (disback/download.py): ASSETS=<folder> reaches make download and the notebooks alike.
ifneq ($(ASSETS),)
export DISBACK_ASSETS := $(abspath $(ASSETS))
endif
OUTDIR := results/$(PROFILE)/notebooks
PROGRESS := runs/$(PROFILE)/progress.log
# Settings in the order of their longest chain of notebooks (digits first).
SETTING_ORDER = digits ring2d
ORDERED_SETTINGS = $(filter $(SETTING_ORDER),$(RUN_SETTINGS)) $(filter-out $(SETTING_ORDER),$(RUN_SETTINGS))
# Within a setting, the notebooks in the order make should start them when several are ready: 05 (the longest
# after 03) before 06 and 04, so the short 04 never delays the digits chain's last step.
NB_ORDER = 01 02 03 05 06 04 07 08 09 10
STEMS = $(foreach s,$(ORDERED_SETTINGS),$(foreach n,$(NB_ORDER),$(basename $(notdir $(wildcard params/$(PROFILE)/$(n)_*__$(s).yaml)))))
# What each notebook reads from the others of its setting (records, the path); NEEDS_NN__<setting> overrides
# NEEDS_NN. Where two notebooks ask for the same shared run, the second waits on the run folder's lock for the
# first to finish it, then loads it. digits has the longest chain (01-02-03-05, most of the cpu profile's time),
# so ring2d's notebooks are chained one after another: at most one of them is ready at a time, and the digits
# chain always has the other job slot.
NEEDS_02 := 01
NEEDS_03 := 02
NEEDS_04 := 03
NEEDS_05 := 03
NEEDS_06 := 03
NEEDS_05__ring2d := 04
# cpu_extra (built on cpu's runs): 05 reuses 04's runs and each trains with two processes, so one after the other.
ifeq ($(PROFILE),cpu_extra)
NEEDS_05 := 04
endif
NEEDS_06__ring2d := 05
stem_of = $(filter $(1)_%__$(2),$(STEMS))
needs_of = $(or $(NEEDS_$(1)__$(2)),$(NEEDS_$(1)))
$(foreach st,$(STEMS),$(eval $(OUTDIR)/$(st).ipynb: $(foreach n,$(call needs_of,$(firstword $(subst _, ,$(st))),$(lastword $(subst __, ,$(st)))),$(addprefix $(OUTDIR)/,$(addsuffix .ipynb,$(call stem_of,$(n),$(lastword $(subst __, ,$(st)))))))))

# `make -n reproduce` still runs the recipe's $(MAKE) line; a dry run records no time. (strip: a comment after the
# value would leave trailing blanks in it, and then no run at all was recorded.)
DRY_RUN = $(strip $(findstring n,$(firstword -$(MAKEFLAGS))))
reproduce: setup
	@test -n "$(STEMS)" || { echo "no parameter files in params/$(PROFILE)/"; exit 2; }
	@empty=$$(test -z "$$(ls -A runs/$(BASE_PROFILE) 2>/dev/null | grep -v '^progress.log$$')" && echo 1 || echo 0); \
	  mkdir -p $(OUTDIR) runs/$(PROFILE); : > $(PROGRESS); \
	  tail -n0 -F $(PROGRESS) 2>/dev/null & tailer=$$!; \
	  start=$$(date +%s); \
	  $(MAKE) --no-print-directory -B -j$(JOBS) $(addprefix $(OUTDIR)/,$(addsuffix .ipynb,$(STEMS))) PROFILE=$(PROFILE) SETTING='$(SETTING)'; rc=$$?; \
	  sleep 1; kill $$tailer 2>/dev/null; took=$$(( $$(date +%s) - start )); \
	  echo "notebooks finished in $$(( took / 60 )) min $$(( took % 60 )) s (rc=$$rc)"; \
	  if [ '$(SETTING)' = '*' ] && [ -z '$(DRY_RUN)' ]; then $(PY) -m disback.bench --profile $(PROFILE) --results results \
	    --record-reproduce-time $$took --test-rc $$rc --from-empty $$empty --jobs $(JOBS); fi; exit $$rc
	$(MAKE) --no-print-directory report PROFILE=$(PROFILE)

$(OUTDIR)/%.ipynb: params/$(PROFILE)/%.yaml
	@stem=$*; nb=$${stem%%__*}; mkdir -p $(OUTDIR) runs/$(PROFILE); t0=$$(date +%s); \
	  echo "$$(date +%H:%M:%S) == start $$stem" >> $(PROGRESS); \
	  DISBACK_PROGRESS_LOG=$(abspath $(PROGRESS)) DISBACK_PROGRESS_LABEL=$$stem OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	  $(PY) -m disback.run_notebook notebooks/$$nb.ipynb $< $@ --profile $(PROFILE) > $(OUTDIR)/$$stem.log 2>&1 \
	    || { tail -30 $(OUTDIR)/$$stem.log; exit 1; }; \
	  echo "$$(date +%H:%M:%S) == done  $$stem in $$(( $$(date +%s) - t0 )) s" >> $(PROGRESS)

# REPORT.md is the cpu profile's, with the cpu_extra profile's records merged in (it builds on cpu's runs); other
# profiles write results/<profile>/REPORT.md.
REPORT_OUT = $(if $(filter cpu,$(BASE_PROFILE)),REPORT.md,results/$(PROFILE)/REPORT.md)
report: setup
	$(PY) -m disback.report --results results --profile $(BASE_PROFILE) --out $(REPORT_OUT)

# Both cores: the unit tests as two pytest-xdist workers (whole files each), then the notebooks in two groups side
# by side: 01-06 in order in one process (they read each other's smoke runs), the paper-scale 07-10 in the other;
# one torch thread per kernel (two processes on two cores: more threads only oversubscribe).
# The wall time lands in results/test_time.json (git-ignored), which `make bench` quotes.
NBVAL = OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-kernel-name disback
test: setup
	@start=$$(date +%s); mkdir -p runs; \
	$(PY) -m pytest -n 2 --dist loadfile tests && { \
	  $(NBVAL) $(wildcard notebooks/0[1-6]_*.ipynb) > runs/nbval-01-06.log 2>&1 & first=$$!; \
	  $(NBVAL) $(filter-out $(wildcard notebooks/0[1-6]_*.ipynb),$(wildcard notebooks/*.ipynb)); second=$$?; \
	  wait $$first; firstrc=$$?; cat runs/nbval-01-06.log; [ $$firstrc = 0 ] && [ $$second = 0 ]; }; rc=$$?; \
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

# Paper scale: convert a downloaded EDM pickle once (never executing its code) into safetensors + JSON.
# make convert-teacher PKL=downloads/edm-ffhq-64x64-uncond-vp.pkl OUT=teachers/ffhq64
convert-teacher: setup
	@test -n "$(PKL)" -a -n "$(OUT)" || { echo "usage: make convert-teacher PKL=<edm pickle> OUT=<folder>"; exit 2; }
	$(PY) -m disback convert-teacher $(PKL) $(OUT)

# Paper scale: the three EDM teachers, their FID reference statistics and the Inception weights (disback/assets.yaml)
# into the asset cache, each checked against its sha256 (trust on first use while the manifest has none), resumable
# after an interruption; each teacher is converted into <cache>/teachers/<setting>/. SETTING=imagenet64 fetches one
# setting's files, NAMES="a.npz b.pkl" the named ones; BASE_URL=<mirror> reads a mirror laid out like the cache.
download: setup
	@$(PY) -m disback download $(if $(filter-out *,$(SETTING)),--setting $(SETTING)) \
	  $(if $(BASE_URL),--base-url $(BASE_URL)) $(NAMES)
