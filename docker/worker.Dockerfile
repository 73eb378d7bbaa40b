# memserve CUDA worker image (`memserve worker`): one container per GPU. The container sees
# the GPU(s) it was given; pick one with MEMSERVE_DEVICE=cuda:N (or `memserve worker --device
# cuda:N`); the default, cuda, is the first one it sees.
#
#   docker build -f docker/worker.Dockerfile -t memserve-worker:0.1.0 .
#   docker run --gpus '"device=0"' -e MEMSERVE_REDIS_URL=redis://redis:6379/0 memserve-worker:0.1.0
#
# One CUDA major for everything: onnxruntime-gpu 1.31.1 (PyPI) is built for CUDA 13.0 and
# cuDNN 9 (its CUDA provider links libcudart.so.13, libcublas.so.13, libcurand.so.10 and
# loads libcudnn.so.9), and torch 2.13.0 from PyPI is the CUDA 13.0 build (its wheel requires
# cuda-toolkit 13.0.3 and nvidia-cudnn-cu13 9.20). A cu128 torch next to it would load a
# second, CUDA 12 cuDNN under the same soname, libcudnn.so.9. CUDA 13 needs an NVIDIA driver
# >= 580 on the host and a GPU of compute capability 7.5 (Turing) or newer.
#
# The build arguments' defaults are this CUDA build. The CPU worker of `make docker-smoke`
# (docs/docker.md) is the same file with BASE_IMAGE a Debian image with Python 3.11,
# WHEELS_IMAGE holding the CPU torch wheel, PIP_CONSTRAINT naming it (torch==2.13.0+cpu, so
# that PyPI's CUDA build cannot be picked instead) and DEVICE=cpu.
#   BASE_IMAGE       the image of both stages; it must have apt-get
#   WHEELS_IMAGE     an image whose files are mounted at /wheels during the pip installs
#                    (scratch: nothing)
#   PIP_INDEX_URL, PIP_FIND_LINKS, PIP_CONSTRAINT, PIP_CERT
#                    pip's own settings, unset by default; as ARGs they reach only the
#                    builder's RUN steps, never the runtime image
#   DEVICE           the image's MEMSERVE_DEVICE
# A CA bundle that the network between the build and PyPI needs is passed as the secret
# `ca_bundle` (with PIP_CERT=/run/secrets/ca_bundle), which no layer keeps.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG WHEELS_IMAGE=scratch

FROM ${WHEELS_IMAGE} AS wheels

# ---------- builder: a virtual environment with memserve and its pinned dependencies ----------
FROM ${BASE_IMAGE} AS builder

# ARG, not ENV: apt's non-interactive mode is for the build, not for the running container.
ARG DEBIAN_FRONTEND=noninteractive
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CONSTRAINT
ARG PIP_CERT
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Ubuntu's archive keeps only the newest build of a package, so an exact `=version` pin would
# make the image unbuildable after the next security update; the base image tag fixes the
# release (24.04: Python 3.12) and the Python packages below are pinned exactly.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch (PyPI's build is the CUDA 13.0 one) brings CUDA 13 and cuDNN 9 as nvidia-* wheels;
# the worker imports torch first and onnxruntime's CUDA provider then uses those same
# libraries (the base image's copies serve onnxruntime used on its own). setuptools is
# pinned here and the project built without build isolation, so an unpinned build backend
# is never fetched.
RUN --mount=type=bind,from=wheels,target=/wheels --mount=type=secret,id=ca_bundle \
    pip install --no-cache-dir torch==2.13.0 onnxruntime-gpu==1.31.1 onnx==1.23.2 \
 && pip install --no-cache-dir setuptools==80.9.0

WORKDIR /build
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
RUN --mount=type=bind,from=wheels,target=/wheels --mount=type=secret,id=ca_bundle \
    pip install --no-cache-dir --no-build-isolation .

# ---------- runtime: the CUDA runtime, the interpreter, the venv and the checkpoints ----------
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
ARG DEVICE=cuda

# The venv's python is a link to /usr/bin/python3.12 (python3.11 on a Debian bookworm base), the
# same package as in the builder (not pinned to an exact version, for the reason given there).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 memserve \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/memserve \
      --shell /usr/sbin/nologin memserve

COPY --from=builder /opt/venv /opt/venv
WORKDIR /srv
# Baked in so that the image runs on its own; mount a volume over /srv/checkpoints to
# serve other checkpoints without a rebuild.
COPY checkpoints ./checkpoints

# HOME: torch and triton keep kernel caches under ~/.cache, which must be writable by the
# non-root user.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/memserve \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MEMSERVE_DEVICE=${DEVICE} \
    MEMSERVE_CHECKPOINT_DIR=/srv/checkpoints

USER 10001:10001

# Healthy while this container's worker renews its heartbeat in Redis (every
# MEMSERVE_HEARTBEAT_INTERVAL_S; it expires after MEMSERVE_HEARTBEAT_TTL_S). The start
# period covers CUDA initialisation and loading the checkpoints before the first beat.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "app.healthcheck", "worker"]

# SIGTERM (docker stop) makes the worker finish the batch in hand, acknowledge it and exit;
# give it the compose file's stop_grace_period.
CMD ["memserve", "worker"]
