# The demo app of docker-compose.yml and deploy/kubernetes/sidecar.yaml, in an
# image of its own that knows nothing of the sidecar: examples/blocking_service.py
# with the OpenTelemetry SDK and its OTLP/HTTP exporter, as any instrumented
# service would ship. Its interpreter is a copy inside its venv
# (/opt/app/bin/python3), a path the sidecar's image does not have, as with
# most apps: the sidecar reads it through the app's /proc/PID/root.
#
#   docker build -f Dockerfile.app -t blocking-service:dev .
#   docker run --rm -e BLOCK_EVERY_S=1 blocking-service:dev

ARG BASE=debian:bookworm-slim
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man /usr/share/locale \
    && python3 -m venv --copies /opt/app \
    && /opt/app/bin/pip install --no-cache-dir --disable-pip-version-check \
        "opentelemetry-sdk>=1.30,<2" "opentelemetry-exporter-otlp-proto-http>=1.30,<2" \
    && /opt/app/bin/python3 -m compileall -q /opt/app

WORKDIR /srv
COPY examples/blocking_service.py ./examples/
ENV PATH=/opt/app/bin:$PATH
# Not root: the sidecar reads the app with SYS_PTRACE, whoever it runs as.
USER 10001:10001
CMD ["python3", "-u", "examples/blocking_service.py"]
