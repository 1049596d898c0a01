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
#
# Prometheus metrics and the /healthz and /readyz probes are served over plain
# HTTP on port 9464 (GATEHOUSE_METRICS_LISTEN; docs/observability.md). The
# image's HEALTHCHECK asks /readyz there, so it keeps working when gRPC is
# served over TLS or mTLS (GATEHOUSE_TLS_CERT, GATEHOUSE_TLS_KEY,
# GATEHOUSE_TLS_CLIENT_CA; docs/tls.md). Publish 9464 to your scraper only:
# it needs no key (it shows key names and counts, never a key).
#
# OpenTelemetry tracing (GATEHOUSE_OTLP_ENDPOINT) needs the `tracing` extra,
# left out to keep the image small; build with it when you want spans:
#   docker build --build-arg EXTRAS=tracing -t gatehouse .

ARG PYTHON_IMAGE=python:3.11-slim
# Optional extras of the gatehouse package, comma-separated (e.g. "tracing").
ARG EXTRAS=""

# --- builder: build the gatehouse wheel and wheels for its dependencies -------
FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS

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
RUN pip wheel --no-build-isolation --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}" \
 && python -c "import glob, sys, zipfile; names = zipfile.ZipFile(glob.glob('/wheels/gatehouse-*.whl')[0]).namelist(); missing = [n for n in ('gatehouse/v1/__init__.py', 'gatehouse/v1/authorization_pb2.py', 'gatehouse/v1/authorization_pb2_grpc.py') if n not in names]; sys.exit(f'wheel lacks {missing}' if missing else 0)"

# --- runtime: the wheel installed into a slim image, run as a non-root user ---
FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEHOUSE_LISTEN=0.0.0.0:50051 \
    GATEHOUSE_API_KEYS=/run/secrets/gatehouse_keys \
    GATEHOUSE_METRICS_LISTEN=0.0.0.0:9464

# /var/log/gatehouse: the one folder the server may write, for an audit log file
# (GATEHOUSE_AUDIT_LOG=/var/log/gatehouse/audit.jsonl with a volume mounted
# there; a named volume takes this folder's owner). "-" writes it to stdout.
RUN groupadd --system --gid 10001 gatehouse \
 && useradd --system --uid 10001 --gid gatehouse --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin gatehouse \
 && mkdir -p /var/log/gatehouse && chown 10001:10001 /var/log/gatehouse

# Install from the builder's wheels only (no index), without copying them into
# a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "gatehouse${EXTRAS:+[$EXTRAS]}" \
 && python -c "import gatehouse.server"

WORKDIR /app
# Owned by root and read-only for the server: it only reads policies and data.
COPY policies/ policies/
COPY examples/ examples/

USER 10001:10001
EXPOSE 50051 9464

# Ready (index built, gRPC serving, store reachable): /readyz on the metrics
# port, over plain HTTP whatever gRPC is served with. Unset
# GATEHOUSE_METRICS_LISTEN and the check reports why it cannot run.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client, os, sys; port = os.environ.get('GATEHOUSE_METRICS_LISTEN', '').rpartition(':')[2] or sys.exit('health check: GATEHOUSE_METRICS_LISTEN is unset; it asks /readyz there'); c = http.client.HTTPConnection('127.0.0.1', int(port), timeout=3); c.request('GET', '/readyz'); r = c.getresponse(); sys.exit(0 if r.status == 200 else r.read(200).decode(errors='replace'))"]

ENTRYPOINT ["gatehouse"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
