# otel-blocksnoop sidecar image (also runs the demo app of docker-compose.yml, so
# the app's interpreter and libraries sit at the same paths as in the sidecar).
#
#   docker build -t otel-blocksnoop .
#   docker run --rm --pid=host --cap-add SYS_ADMIN --cap-add SYS_PTRACE \
#     -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
#     -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 -e OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
#     otel-blocksnoop otel-blocksnoop -t 50 PID
#
# PID is the app's PID on the host, and the app must run in the host's PID
# namespace too (see docker-compose.yml for why).
#
# The same steps as scripts/setup.sh, minus the two that belong to the host and
# cannot happen in an image build: the kernel headers (BCC compiles against the
# running kernel's, so the host's /lib/modules and /usr/src are mounted at run
# time; on Debian run scripts/setup.sh on the host once, which links them) and
# the tracefs mount (the host's /sys/kernel/tracing is mounted in).
FROM debian:bookworm-slim

ARG AUSTIN_VERSION=4.0.0
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# BCC (python3-bpfcc, libbpfcc), syscall names (linux-libc-dev), musl for Austin,
# procps for pgrep (docker-compose.yml finds the app's PID with it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-bpfcc libbpfcc bpfcc-tools \
        linux-libc-dev musl unzip procps ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# uv in a venv of its own (Debian's Python refuses pip installs outside a venv).
RUN python3 -m venv /opt/tools \
    && /opt/tools/bin/pip install --no-cache-dir --disable-pip-version-check uv

WORKDIR /opt/otel-blocksnoop
COPY pyproject.toml uv.lock README.md LICENSE ./
COPY otel_blocksnoop ./otel_blocksnoop
COPY bpf ./bpf
# The locked runtime dependencies (not the dev group, where austin-python checks our
# MOJO decoder) and the project itself, on Debian's Python 3.11.
RUN UV_PYTHON=/usr/bin/python3 UV_PYTHON_DOWNLOADS=never \
        /opt/tools/bin/uv sync --locked --no-dev --no-editable --no-cache

# bcc in the venv: a directory holding only a link to Debian's bcc package, so the
# rest of dist-packages (an old protobuf, ...) cannot shadow the venv's own.
RUN mkdir -p .venv/system-bcc \
    && ln -s /usr/lib/python3/dist-packages/bcc .venv/system-bcc/bcc \
    && .venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
        | xargs -I{} sh -c 'echo /opt/otel-blocksnoop/.venv/system-bcc > {}/otel_blocksnoop_system_bcc.pth' \
    && .venv/bin/python -c 'import bcc'

# Austin: the musllinux build (the manylinux one needs glibc 2.38; bookworm has 2.36).
RUN tmp="$(mktemp -d)" \
    && /opt/tools/bin/pip download -q --no-cache-dir --disable-pip-version-check --no-deps \
        --only-binary :all: --platform musllinux_1_1_x86_64 \
        -d "$tmp" "austin-dist==${AUSTIN_VERSION}" \
    && unzip -q -o -j "$tmp"/austin_dist-*.whl \
        "austin_dist-${AUSTIN_VERSION}.data/scripts/austin" -d "$tmp" \
    && install -m 0755 "$tmp/austin" .venv/bin/austin \
    && rm -rf "$tmp" \
    && .venv/bin/austin --version

COPY examples ./examples

ENV PATH=/opt/otel-blocksnoop/.venv/bin:$PATH
CMD ["otel-blocksnoop", "--help"]
