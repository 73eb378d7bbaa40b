# CUDA worker image: one worker per GPU (MEMSERVE_DEVICE=cuda:N).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MEMSERVE_DEVICE=cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY checkpoints ./checkpoints
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
 && pip install --no-cache-dir .
RUN useradd --system --uid 10001 memserve
USER memserve
CMD ["memserve", "worker"]
