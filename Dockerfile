# syntax=docker/dockerfile:1
# marketplace-pay. Two stages: `build` turns the pinned dependency set (ops/requirements.lock:
# versions and hashes) and this project into wheels; `runtime` installs exactly those wheels,
# with no package index, into /opt/venv, and runs the service as an unprivileged user. Both
# stages run ops/install.sh, which the tests run as a plain script too (no Docker engine needed).
#   docker build -t marketplace-pay .      (or: docker compose build)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ops/install.sh ops/requirements.lock ops/
COPY db db
COPY src src
RUN sh ops/install.sh wheels /wheels

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY ops/install.sh ops/requirements.lock /opt/ops/
# the wheels are mounted from the build stage, not copied: no layer keeps them
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    sh /opt/ops/install.sh install /wheels /opt/venv \
    && rm -rf /opt/ops
RUN groupadd --system --gid 10001 marketplace-pay \
    && useradd --system --uid 10001 --gid marketplace-pay --home-dir /var/lib/marketplace-pay \
       --create-home --shell /usr/sbin/nologin marketplace-pay
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MP_DATA_DIR=/var/lib/marketplace-pay \
    MP_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/marketplace-pay
EXPOSE 8000
# Healthy = ready: the database, Redis and the bus answer (GET /health/ready is 200). An
# orchestrator that restarts unhealthy containers should probe /health/live for that instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2)"]
ENTRYPOINT ["marketplace-pay"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
