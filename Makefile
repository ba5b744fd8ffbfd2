# Two commands do everything: `make demo` and `make test`. Both set up .venv/ first;
# setup is a no-op while .venv is newer than pyproject.toml.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bertpipe-installed
# DeepSpeed caches its compiled ops in .venv/torch_extensions (jobs/train/runtime.py)
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup browser demo demo-zh lint test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	# CPU torch first, or deepspeed pulls a CUDA build of its own
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: setup
	$(PY) -m jobs.demo

# Chinese: People's Daily + bert-base-chinese vocab + jieba whole-word masking -> sentiment
demo-zh: setup
	$(PY) -m jobs.demo --zh

# The MLflow UI test drives Debian's Chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the MLflow UI test"; exit 1; fi; }

lint: setup
	$(VENV)/bin/ruff check .

# With no PYTEST_ARGS the unit suite (no cluster; niced; its report follows the integration
# suite's) runs beside the integration suite, whose Ray jobs leave part of the two cores idle
# while their processes start. Either failing fails `make test`.
test: setup browser lint
ifeq ($(strip $(PYTEST_ARGS)),)
	@nice -n 10 $(PY) -m pytest tests/unit -o cache_dir=.pytest_cache/unit > .pytest-unit.log 2>&1 & \
	unit=$$!; $(PY) -m pytest tests/integration; integration=$$?; wait $$unit; unit=$$?; \
	echo "== tests/unit (ran beside tests/integration) =="; cat .pytest-unit.log; \
	test $$integration = 0 && test $$unit = 0
else
	$(PY) -m pytest $(PYTEST_ARGS)
endif

clean:
	rm -rf $(VENV) .pytest_cache
