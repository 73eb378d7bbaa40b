# Two commands do all the set-up on a fresh machine:
#   make serve   install what serving needs into .venv if needed, then run memserve (embedded
#                Redis unless MEMSERVE_REDIS_URL); HOST= and PORT= set its listen address:
#                make serve PORT=8080
#   make test    install the dev extra too if needed, then lint, type-check and run the whole test suite
# TORCH picks the PyTorch build: the default is the CPU wheel; on a GPU host the CUDA 13 build
# (the CUDA onnxruntime-gpu 1.31 needs too):
#   make serve TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
# `make serve PORT=8080 HOST=0.0.0.0`: taken from make's command line only, since many shells
# export HOST as the machine's name (MEMSERVE_HOST / MEMSERVE_PORT are the environment's way).
serve_flag = $(if $(filter command line,$(origin $(1))),--$(2) $($(1)))

.PHONY: install install-serve serve test lint bench-stream clean docker-smoke

# Two stamps, one per install: serving's dependencies, then the dev extra (linters, test
# tools, training) on top. The dev stamp depends on the serve one, so `make serve` then
# `make test` adds the dev extra, and an edited pyproject.toml redoes both, in order.
# pip runs without -q: the first install downloads GBs, and its progress is the only sign of life.
$(VENV)/.installed-serve: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-serve
	$(PY) -m pip install -e '.[dev]'
	touch $@

install-serve: $(VENV)/.installed-serve

install: $(VENV)/.installed-dev

serve: install-serve
	$(VENV)/bin/memserve serve $(call serve_flag,HOST,host) $(call serve_flag,PORT,port)

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
