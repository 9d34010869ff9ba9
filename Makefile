# Two commands do all set-up: `make run` (the pipeline on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
TORCH_VERSION := 2.13.0

.PHONY: setup run test lint lock clean-state

setup: $(VENV)/.installed

# torch first, through pip: where a local CPU wheel is on pip's find-links it is used (uv does not look there).
# Bytecode compiled at install: where PYTHONDONTWRITEBYTECODE is set, every process (each `ldmflow`, Prefect
# server, test worker) would otherwise compile torch, diffusers and MLflow from source again, about 10 s each.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "torch==$(TORCH_VERSION)" uv
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(VENV)/bin/python -r requirements.lock -e .
	touch $@

run: setup
	$(VENV)/bin/ldmflow run

test: setup
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

lint: setup
	$(VENV)/bin/ruff check flows infra tasks models tests benchmarks

lock: setup
	$(VENV)/bin/uv pip compile requirements.in --python-version 3.11 --no-header -o requirements.lock

# Removes local run state (S3 data, tracking DB, Prefect home); outputs stay under data/ and artifacts/.
clean-state:
	rm -rf .ldmflow
