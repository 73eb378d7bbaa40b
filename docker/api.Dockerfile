# API image: FastAPI + uvicorn; no GPU. The API never imports torch, but the package
# depends on it, so the small CPU wheel is installed.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MEMSERVE_HOST=0.0.0.0
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY checkpoints ./checkpoints
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir .
RUN useradd --system --uid 10001 memserve
USER memserve
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health/live')"
CMD ["memserve", "api"]
