# Two commands a newcomer needs: `make reproduce` (PROFILE=cpu by default) and `make test`.
# Both create .venv from nothing when it is missing.
PROFILE ?= cpu
SETTING ?= *
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup reproduce report test smoke clean clean-runs run-setting-%

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

test: setup
	$(PY) -m pytest tests
	$(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-kernel-name disback notebooks

smoke:
	$(MAKE) reproduce PROFILE=smoke

clean:
	rm -rf runs results/smoke

# Runs are shared and reused across notebooks (README); start from none to time a full reproduction.
clean-runs:
	rm -rf runs/$(PROFILE)

# Paper scale: convert a downloaded EDM pickle once (never executing its code) into safetensors + JSON.
# make convert-teacher PKL=downloads/edm-ffhq-64x64-uncond-vp.pkl OUT=teachers/ffhq64
.PHONY: convert-teacher
convert-teacher: setup
	@test -n "$(PKL)" -a -n "$(OUT)" || { echo "usage: make convert-teacher PKL=<edm pickle> OUT=<folder>"; exit 2; }
	$(PY) -m disback convert-teacher $(PKL) $(OUT)
