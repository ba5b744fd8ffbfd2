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
	# CPU torch first, or deepspeed pulls a CUDA build of its own. No bytecode here: pip
	# compiles all 24k files of the venv one at a time (2 of setup's 3 minutes), and the jobs
	# import about a quarter of them. Instead the venv's Python writes the bytecode of what it
	# imports, even where PYTHONDONTWRITEBYTECODE is set (many containers set it): else every
	# process, each Ray worker included, compiles torch, Ray and DeepSpeed from source again
	# (28.9 s instead of 11.7 s to import the stack here).
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e ".[test]"
	echo "import sys; sys.dont_write_bytecode = False" > \
	  "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bertpipe-bytecode.pth"
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

# With no PYTEST_ARGS two pytest processes share the two cores: the integration tests that
# start Ray, and beside them (niced, its report printed after) tests/unit and then the
# integration tests marked `beside` (they start no Ray: two Ray instances on one machine race
# for ports, so that process refuses ray.init). The Ray tests leave part of the cores idle
# while their processes start and wait; the second process fills that. Either failing fails
# `make test`.
test: setup browser lint
ifeq ($(strip $(PYTEST_ARGS)),)
	@{ export BERTPIPE_TESTS_BESIDE=1; \
	   nice -n 10 $(PY) -m pytest tests/unit -o cache_dir=.pytest_cache/unit; unit=$$?; \
	   nice -n 10 $(PY) -m pytest tests/integration -m beside -o cache_dir=.pytest_cache/beside; \
	   beside=$$?; test $$unit = 0 && test $$beside = 0; } > .pytest-beside.log 2>&1 & \
	pid=$$!; $(PY) -m pytest tests/integration -m "not beside"; main=$$?; \
	wait $$pid; beside=$$?; \
	echo "== tests/unit and tests/integration -m beside (ran beside the others) =="; \
	cat .pytest-beside.log; test $$main = 0 && test $$beside = 0
else
	$(PY) -m pytest $(PYTEST_ARGS)
endif

clean:
	rm -rf $(VENV) .pytest_cache
