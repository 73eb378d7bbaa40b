# Two commands do all the set-up on a fresh machine:
#   make serve   install into .venv if needed, then run memserve (embedded Redis unless MEMSERVE_REDIS_URL)
#   make test    install into .venv if needed, then lint, type-check and run the whole test suite
# TORCH picks the PyTorch build: the default is the CPU wheel; on a GPU host the CUDA 13 build
# (the CUDA onnxruntime-gpu 1.31 needs too):
#   make serve TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install serve test lint bench-stream clean docker-smoke

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/memserve serve

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy app memserve

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench-stream: install
	$(VENV)/bin/memserve bench stream --url http://127.0.0.1:8000 --sessions 64 --points 1 --duration 20

# Builds the images on a local Debian base (no image registry needed), runs docker-compose.cpu.yml
# (Redis, API, one CPU worker) and tests/e2e/test_docker_compose.py against it, then takes it
# down, on failure too. Needs dockerd, debootstrap and docker-compose; see docs/docker.md.
docker-smoke: install
	bash docker/smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
