# The load generator and the sweep driver (no vLLM inside: vLLM runs in its own image).
# Everything comes from the base image and PyPI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY loadgen ./loadgen
COPY server_launch ./server_launch
COPY scenarios ./scenarios
# Not editable: the wheel carries scenarios/ as package data. /app keeps the sources, so
# `python -m loadgen` run here (docker-compose's command) imports them and reads
# /app/scenarios, which compose mounts from the host: scenarios edited there need no
# rebuild. [docker] adds the Docker SDK the sweep profile needs, [fast] uvloop (~10% less
# client CPU per chunk).
RUN pip install ".[docker,fast]"

CMD ["python", "-m", "loadgen", "--help"]
