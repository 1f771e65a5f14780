# Two commands a newcomer needs: `make reproduce` (PROFILE=cpu by default) and `make test`.
# Both create .venv from nothing when it is missing.
PROFILE ?= cpu
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PARAMS = $(sort $(wildcard params/$(PROFILE)/*.yaml))

.PHONY: setup reproduce report test smoke clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name disback --display-name "disback (.venv)"
	touch $(STAMP)

# Every params/$(PROFILE)/NN_name__setting.yaml runs notebooks/NN_name.ipynb into results/$(PROFILE)/notebooks/.
reproduce: setup
	@test -n "$(PARAMS)" || { echo "no parameter files in params/$(PROFILE)/"; exit 2; }
	@mkdir -p results/$(PROFILE)/notebooks
	@for p in $(PARAMS); do \
	  stem=$$(basename $$p .yaml); nb=$${stem%%__*}; \
	  echo "== $$stem"; \
	  $(PY) -m disback.params notebooks/$$nb.ipynb $$p || exit 1; \
	  $(VENV)/bin/papermill --no-progress-bar -k disback --cwd notebooks -f $$p -p profile $(PROFILE) \
	    notebooks/$$nb.ipynb results/$(PROFILE)/notebooks/$$stem.ipynb || exit 1; \
	done
	$(MAKE) report PROFILE=$(PROFILE)

report: setup
	$(PY) -m disback.report --results results --profile $(PROFILE) --out REPORT.md

test: setup
	$(PY) -m pytest tests
	$(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-kernel-name disback notebooks

smoke:
	$(MAKE) reproduce PROFILE=smoke

clean:
	rm -rf runs results/smoke
