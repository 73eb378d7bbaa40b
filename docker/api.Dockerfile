# memserve API image: FastAPI + uvicorn (`memserve api`), no GPU. Stateless: run as many
# replicas as you like behind a load balancer, all pointed at one Redis.
#
#   docker build -f docker/api.Dockerfile -t memserve-api:0.1.0 .
#   docker run -e MEMSERVE_REDIS_URL=redis://redis:6379/0 -p 8000:8000 memserve-api:0.1.0
#
# The API never imports torch (DESIGN.md), but the package depends on it, so the small CPU
# wheel is installed rather than the default CUDA build (GBs the API would never load).

# ---------- builder: a virtual environment with memserve and its pinned dependencies ----------
FROM python:3.11.14-slim-bookworm AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the CPU index, so that `pip install .` finds torch>=2.3 satisfied and
# does not pull the CUDA build from PyPI. setuptools is pinned here and the project built
# without build isolation, so an unpinned build backend is never fetched.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir setuptools==80.9.0

WORKDIR /build
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
RUN pip install --no-cache-dir --no-build-isolation .

# ---------- runtime: the interpreter, the venv and the checkpoints; no sources, no build files ----------
FROM python:3.11.14-slim-bookworm

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
