# syntax=docker/dockerfile:1
#
# One image for the whole mesh; each Deployment picks its service by command:
#   python -m services.<name>.app            serve
#   python -m services.<name>.app migrate    run that service's Alembic history, then exit
#
# Build:  docker build -t accrue:dev .
#
# Our code is not installed as a package (pyproject.toml has `packages = []`): it runs
# from /app and /app/gen through PYTHONPATH, the same two roots `make` puts on the dev
# venv's path. pyproject.toml stays the one place dependencies are declared.
#
# Only the paths the image needs are copied, so a host .venv, gen/ or .git in the build
# context never leaks into a layer (a .dockerignore would also keep them out of the context).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- generated protobuf code: built with `make gen`, exactly as on a laptop ------------
FROM ${PYTHON_IMAGE} AS gen
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# `make gen` creates .venv, installs '.[dev]' (grpcio-tools, mypy-protobuf) and runs
# tools/gen_protos.py; it needs nothing of libs/ or services/.
COPY pyproject.toml Makefile ./
COPY tools/ tools/
COPY protos/ protos/
RUN --mount=type=cache,target=/root/.cache/pip make gen

# ---- runtime ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The root filesystem is read-only in Kubernetes: bytecode is compiled at build time
# (below) and never written at run time.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app:/app/gen

RUN groupadd --system --gid 10001 accrue \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin accrue

# Runtime dependencies only, from pyproject.toml alone so this layer is rebuilt only when
# the dependencies change. Built outside /app so no build/ or *.egg-info lands there.
COPY pyproject.toml /tmp/accrue-deps/pyproject.toml
RUN pip install --no-cache-dir /tmp/accrue-deps && rm -rf /tmp/accrue-deps

WORKDIR /app
COPY libs/ libs/
COPY services/ services/
COPY --from=gen /src/gen/ gen/
RUN python -m compileall -q -j 0 libs services gen

# numeric, so Kubernetes' runAsNonRoot can verify it
USER 10001:10001

# gRPC services listen on 50051, the gateway's HTTP on 8000
EXPOSE 50051 8000

# Kubernetes always sets the command; this default is only for `docker run`.
CMD ["python", "-m", "services.run", "gateway"]
