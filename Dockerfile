# One image for every role: `segments api | consume | sweep | replay | rules ... | demo`.
# Build: docker build -t customer-segments .
# Run:   docker run --rm -e SEGMENTS_KAFKA_BOOTSTRAP=kafka:9092 -e SEGMENTS_REDIS_URL=redis://redis:6379/0 customer-segments consume

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY consumers ./consumers
COPY schemas ./schemas
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install .

FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="customer-segments" \
      org.opencontainers.image.description="Real-time customer segmentation: Kafka events to exactly-once Redis profiles, segments served over HTTP" \
      org.opencontainers.image.source="https://example.invalid/customer-segments" \
      org.opencontainers.image.licenses="Proprietary"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 segments \
 && useradd --system --uid 10001 --gid segments --no-create-home --shell /usr/sbin/nologin segments
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
# The API answers /healthz; other roles are probed by their orchestrator (see deploy/).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os,urllib.request,sys; sys.exit(0 if os.environ.get('SEGMENTS_ROLE','api')!='api' else (urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200))"
ENTRYPOINT ["segments"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
