# One image for every role: `segments api | consume | sweep | topics | rules ... | demo`.
# Build: docker build -t customer-segments .
# Run:   docker run --rm -e SEGMENTS_KAFKA_BOOTSTRAP=kafka:9092 \
#          -e SEGMENTS_REDIS_URL=redis://redis:6379/0 customer-segments consume
# Dependencies come from requirements.lock (`make lock`), installed with --require-hashes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
# The lock alone first: this layer is rebuilt only when the dependencies change.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY consumers ./consumers
COPY schemas ./schemas
# Our own code only: every dependency is already installed from the lock.
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="customer-segments" \
      org.opencontainers.image.description="Real-time customer segmentation: Kafka events to exactly-once Redis profiles, segments served over HTTP" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://example.invalid/customer-segments" \
      org.opencontainers.image.documentation="https://example.invalid/customer-segments/blob/main/docs/OPERATIONS.md" \
      org.opencontainers.image.licenses="Proprietary" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
# Bytecode is compiled at build time (the root file system is read-only in k8s); logs unbuffered
# so a crash's last lines reach the collector.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1
RUN groupadd --system --gid 10001 segments \
 && useradd --system --uid 10001 --gid segments --no-create-home --shell /usr/sbin/nologin segments
COPY --from=build /opt/venv /opt/venv
WORKDIR /tmp
USER 10001:10001
# 8000: the API; 9400: the probes server of `consume` and `sweep` (SEGMENTS_PROBES__PORT).
EXPOSE 8000 9400
# Every long-running role drains on SIGTERM: uvicorn finishes requests in flight
# (--timeout-graceful-shutdown), the consumer finishes its batch and commits.
STOPSIGNAL SIGTERM
# Probes the role this container runs (PID 1's arguments): the API's /healthz, or the probes
# server of consume/sweep; one-shot roles (topics, rules) and demo have nothing to probe.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-m", "service.healthcheck"]
ENTRYPOINT ["segments"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--timeout-graceful-shutdown", "20"]
