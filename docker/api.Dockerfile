# memserve API image: FastAPI + uvicorn (`memserve api`), no GPU. Stateless: run as many
# replicas as you like behind a load balancer, all pointed at one Redis.
#
#   docker build -f docker/api.Dockerfile -t memserve-api:0.1.0 .
#   docker run -e MEMSERVE_REDIS_URL=redis://redis:6379/0 -p 8000:8000 memserve-api:0.1.0
#
# The API never imports torch (DESIGN.md), but the package depends on it, so the small CPU
# wheel is installed rather than the default CUDA build (GBs the API would never load).
#
# The build arguments' defaults are the production build. A host that reaches PyPI but no
# image registry (and not the PyTorch index) builds on a local Debian base, with the CPU torch
# wheel from a local image and its CA bundle as a secret: see docs/docker.md and
# `make docker-smoke`.
#   BASE_IMAGE       the Python 3.11 image of both stages
#   WHEELS_IMAGE     an image whose files are mounted at /wheels during the pip installs
#                    (scratch: nothing); point PIP_FIND_LINKS / PIP_CONSTRAINT into it
#   TORCH_INDEX_URL  the index torch and its dependencies come from
#   PIP_INDEX_URL, PIP_FIND_LINKS, PIP_CONSTRAINT, PIP_CERT
#                    pip's own settings, unset by default; as ARGs they reach only the
#                    builder's RUN steps, never the runtime image
# A CA bundle that the network between the build and the index needs is passed as the secret
# `ca_bundle` (`--secret id=ca_bundle,src=...` with PIP_CERT=/run/secrets/ca_bundle): a
# secret is not written into any layer.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
ARG WHEELS_IMAGE=scratch

FROM ${WHEELS_IMAGE} AS wheels

# ---------- builder: a virtual environment with memserve and its pinned dependencies ----------
FROM ${BASE_IMAGE} AS builder

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CONSTRAINT
ARG PIP_CERT

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the CPU index, so that `pip install .` finds torch>=2.3 satisfied and
# does not pull the CUDA build from PyPI. setuptools is pinned here and the project built
# without build isolation, so an unpinned build backend is never fetched.
RUN --mount=type=bind,from=wheels,target=/wheels --mount=type=secret,id=ca_bundle \
    pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX_URL}" \
 && pip install --no-cache-dir setuptools==80.9.0

WORKDIR /build
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
RUN --mount=type=bind,from=wheels,target=/wheels --mount=type=secret,id=ca_bundle \
    pip install --no-cache-dir --no-build-isolation .

# ---------- runtime: the interpreter, the venv and the checkpoints; no sources, no build files ----------
# The same base as the builder: the venv's python is a link to the base image's interpreter.
FROM ${BASE_IMAGE}

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can verify it, and files on mounted
# volumes get a predictable owner.
RUN groupadd --system --gid 10001 memserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin memserve

COPY --from=builder /opt/venv /opt/venv
WORKDIR /srv
# Baked in so that the image runs on its own; mount a volume over /srv/checkpoints to
# serve other checkpoints without a rebuild.
COPY checkpoints ./checkpoints

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MEMSERVE_HOST=0.0.0.0 \
    MEMSERVE_PORT=8000 \
    MEMSERVE_CHECKPOINT_DIR=/srv/checkpoints

USER 10001:10001
EXPOSE 8000

# Liveness only (/health/live): a replica waiting for Redis or for a worker is not broken,
# and restarting it would not help; load balancers should route on /health/ready instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "app.healthcheck", "api"]

CMD ["memserve", "api"]
