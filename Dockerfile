# syntax=docker/dockerfile:1
#
# gatehouse server image.
#
#   docker build -t gatehouse .
#   docker run --rm gatehouse keys new app --scopes check,read,write,admin > app-key.txt
#   (echo 'keys:'; tail -n +4 app-key.txt) > gatehouse-keys.yaml   # line 1 is the key
#   docker run --rm -p 50051:50051 \
#       -v "$PWD/gatehouse-keys.yaml:/run/secrets/gatehouse_keys:ro" gatehouse
#   grpcurl -plaintext localhost:50051 list                      # open: no key needed
#   grpcurl -plaintext -H "authorization: Bearer $(head -1 app-key.txt)" \
#       localhost:50051 gatehouse.v1.AdminService/GetPolicyStatus
#
# The server listens on 0.0.0.0 in the container, so it needs API keys: it
# reads the keys file named by GATEHOUSE_API_KEYS (default
# /run/secrets/gatehouse_keys, where a Docker or compose secret lands) and
# refuses to start when the file is missing or invalid. The file holds only
# sha256 hashes of the keys, never a key; see docs/auth.md. Edits to it are
# picked up without a restart (mount its folder rather than the single file
# if your editor replaces files, so the container sees the new one).
#
# The image holds the embedded default: memory store, policies/coupler and
# examples/coupler.data.yaml, both under /app (the working directory), so
# `gatehouse serve` finds them with no flags. Mount another policy set and
# point GATEHOUSE_POLICY / GATEHOUSE_DATA at it to serve something else.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: build the gatehouse wheel and wheels for its dependencies -------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
# The build requirements are pyproject's [build-system] requires (setuptools,
# grpcio-tools, googleapis-common-protos), read from the file so they are
# declared in one place; `wheel` for setuptools releases without bdist_wheel.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
        > /tmp/build-requirements.txt \
 && pip install -r /tmp/build-requirements.txt wheel
COPY tools/ tools/
COPY protos/ protos/
COPY src/ src/
# setup.py generates the gRPC modules (package gatehouse.v1) from protos/ as
# part of the build; .dockerignore keeps any local copy out. The check after
# the build fails the image build if the wheel lacks the generated modules.
RUN pip wheel --no-build-isolation --wheel-dir /wheels . \
 && python -c "import glob, sys, zipfile; names = zipfile.ZipFile(glob.glob('/wheels/gatehouse-*.whl')[0]).namelist(); missing = [n for n in ('gatehouse/v1/__init__.py', 'gatehouse/v1/authorization_pb2.py', 'gatehouse/v1/authorization_pb2_grpc.py') if n not in names]; sys.exit(f'wheel lacks {missing}' if missing else 0)"

# --- runtime: the wheel installed into a slim image, run as a non-root user ---
FROM ${PYTHON_IMAGE} AS runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEHOUSE_LISTEN=0.0.0.0:50051 \
    GATEHOUSE_API_KEYS=/run/secrets/gatehouse_keys

RUN groupadd --system --gid 10001 gatehouse \
 && useradd --system --uid 10001 --gid gatehouse --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin gatehouse

# Install from the builder's wheels only (no index), without copying them into
# a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels gatehouse \
 && python -c "import gatehouse.server"

WORKDIR /app
# Owned by root and read-only for the server: it only reads policies and data.
COPY policies/ policies/
COPY examples/ examples/

USER 10001:10001
EXPOSE 50051

# Standard gRPC health service; exits 0 only when the server answers SERVING.
# GATEHOUSE_HEALTH_ADDR overrides the address if serve listens elsewhere.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg; ch = grpc.insecure_channel(os.environ.get('GATEHOUSE_HEALTH_ADDR', '127.0.0.1:50051'), options=[('grpc.enable_http_proxy', 0)]); r = hg.HealthStub(ch).Check(h.HealthCheckRequest(service=''), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["gatehouse"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
