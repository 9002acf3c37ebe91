# One image for every production role; the compose file picks the command (api | worker | migrate).
# On PyPI, torch==2.13.0 for linux/x86_64 is the CUDA build, which the GPU worker needs.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 lethe
WORKDIR /srv/lethe

COPY constraints.txt pyproject.toml README.md ./
RUN pip install -c constraints.txt torch==2.13.0
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install -c constraints.txt ".[engine,postgres,redis]"

USER lethe
ENV LETHE_PROFILE=production LETHE_HOME=/var/lib/lethe
EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
