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
	# CPU torch first, or deepspeed pulls a CUDA build of its own. pip compiles bytecode one
	# file at a time (about 2 of setup's 3 minutes here); compileall does it on every core.
	# It exits 1 for the few files in the venv that are not Python 3 (pip ignores them too).
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e ".[test]"
	$(PY) -m compileall -qq -j 0 $(VENV)/lib > /dev/null || true
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

# With no PYTEST_ARGS two pytest processes share the two cores: tests/integration, and beside
# it (niced, its report printed after) tests/unit and then BESIDE, integration tests that start
# no Ray and no server (a second Ray instance beside the first once took a port that `cluster
# up` had picked). The integration suite's Ray jobs leave part of the cores idle while their
# processes start; the niced stream fills that. Either failing fails `make test`.
BESIDE := tests/integration/test_finetune_zh.py

test: setup browser lint
ifeq ($(strip $(PYTEST_ARGS)),)
	@{ nice -n 10 $(PY) -m pytest tests/unit -o cache_dir=.pytest_cache/unit; unit=$$?; \
	   nice -n 10 $(PY) -m pytest $(BESIDE) -o cache_dir=.pytest_cache/beside; beside=$$?; \
	   test $$unit = 0 && test $$beside = 0; } > .pytest-beside.log 2>&1 & \
	pid=$$!; $(PY) -m pytest tests/integration $(addprefix --ignore=,$(BESIDE)); main=$$?; \
	wait $$pid; beside=$$?; \
	echo "== tests/unit and $(BESIDE) (ran beside tests/integration) =="; \
	cat .pytest-beside.log; test $$main = 0 && test $$beside = 0
else
	$(PY) -m pytest $(PYTEST_ARGS)
endif

clean:
	rm -rf $(VENV) .pytest_cache
