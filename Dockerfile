# syntax=docker/dockerfile:1
# Lethe's production images, one target per role (docker-compose.yml builds each):
#   service     the API, `lethe migrate` and the maintenance worker (reaper, sweeps): no torch, which the API
#               never imports (tests/deploy checks these entry points with torch unimportable)
#   worker-gpu  a GPU worker: torch 2.14.1 + torchvision 0.29.1 from PyPI, whose linux x86_64 wheels are
#               the CUDA builds (CUDA 13 runtime and cuDNN come as pip packages; the host needs a recent
#               NVIDIA driver, R580 or later, and the NVIDIA Container Toolkit). timm builds on torchvision.
#   worker-cpu  a CPU worker: torch 2.14.1+cpu and torchvision 0.29.1+cpu from the PyTorch CPU index
#               (`make` installs PyPI's CUDA build, which also runs on the CPU)
# Build with the commit stamped in: results and caches are keyed on it (app.core.config.code_version):
#   LETHE_CODE_VERSION=$(git rev-parse HEAD) docker compose build
#
# Base image pinned by exact tag. No registry is reachable where this file was written, so no digest is
# stated here rather than an unverified one: pin it at release with
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm   (then FROM python:...@sha256:<digest>)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# One unprivileged user owns the data volume: a fresh named volume mounted at /var/lib/lethe takes this
# directory's owner and mode.
RUN useradd --create-home --uid 10001 --user-group lethe \
    && install -d -o lethe -g lethe -m 0750 /var/lib/lethe
WORKDIR /srv/lethe
COPY constraints.txt pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
# The typed client (client/, not on any index): the server depends on it, so every install names ./client.
COPY client ./client
# timm never downloads (pretrained is always off); the API's shape tables are cached on the data volume.
ENV LETHE_PROFILE=production LETHE_HOME=/var/lib/lethe LETHE_LOG_FORMAT=json HF_HUB_OFFLINE=1 \
    LETHE_SHAPE_TABLE_DIR=/var/lib/lethe/shape-tables

FROM base AS service
# Editable, as `make` installs: app.core.migrate finds alembic.ini and migrations/ beside the app package,
# which a wheel install into site-packages would leave behind.
RUN pip install -c constraints.txt ./client -e ".[postgres,redis,s3]" \
    && ! python -c "import torch" 2>/dev/null
# Last, so that a new commit rebuilds only this layer; required, so that no image records a bare "0.1.0".
ARG LETHE_CODE_VERSION
RUN test -n "$LETHE_CODE_VERSION" || { echo "build with --build-arg LETHE_CODE_VERSION=\$(git rev-parse HEAD)"; exit 1; }
ENV LETHE_CODE_VERSION=${LETHE_CODE_VERSION}
USER lethe
EXPOSE 8000
# The API's probe; compose replaces it for the other roles of this image (migrate: none, maintenance: :9400).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# The access log is Lethe's own (JSON, with request id and tenant): uvicorn's is off.
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-access-log"]

FROM base AS worker-gpu
# PyPI's torch 2.14.1 / torchvision 0.29.1 wheels for linux x86_64: the CUDA builds, a matched pair.
RUN pip install -c constraints.txt torch==2.14.1 torchvision==0.29.1 \
    && pip install -c constraints.txt ./client -e ".[engine,postgres,redis,s3]"
ARG LETHE_CODE_VERSION
RUN test -n "$LETHE_CODE_VERSION" || { echo "build with --build-arg LETHE_CODE_VERSION=\$(git rev-parse HEAD)"; exit 1; }
ENV LETHE_CODE_VERSION=${LETHE_CODE_VERSION} LETHE_WORKER_METRICS_PORT=9400
USER lethe
EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/', timeout=4)"]
CMD ["lethe", "worker", "--queues", "gpu", "--name", "gpu0"]

FROM base AS worker-cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1+cpu torchvision==0.29.1+cpu \
    && pip install -c constraints.txt ./client -e ".[engine,postgres,redis,s3]"
ARG LETHE_CODE_VERSION
RUN test -n "$LETHE_CODE_VERSION" || { echo "build with --build-arg LETHE_CODE_VERSION=\$(git rev-parse HEAD)"; exit 1; }
ENV LETHE_CODE_VERSION=${LETHE_CODE_VERSION} LETHE_WORKER_METRICS_PORT=9400
USER lethe
EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/', timeout=4)"]
CMD ["lethe", "worker", "--queues", "gpu", "--name", "cpu0"]
