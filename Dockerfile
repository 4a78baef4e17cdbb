# otel-blocksnoop sidecar image: the sidecar, its locked venv, BCC's run-time
# part and Austin, and nothing that only builds them.
#
#   docker build -t otel-blocksnoop:dev .
#   docker run --rm --pid=container:APP --cap-drop ALL --cap-add SYS_ADMIN --cap-add SYS_PTRACE \
#     --read-only --tmpfs /tmp --security-opt no-new-privileges \
#     -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
#     -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 -e OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
#     otel-blocksnoop:dev otel-blocksnoop -t 50 PID
#
# docker-compose.yml runs it beside an app in the app's PID namespace, and
# deploy/kubernetes/ as a DaemonSet or a pod's sidecar.
#
# What comes from the host at run time, not the image: the kernel headers (BCC
# compiles against the running kernel's, so the host's /lib/modules and /usr/src
# are mounted; on Debian run scripts/setup.sh on the host once, which links
# them) and tracefs (the host's /sys/kernel/tracing is mounted in).
#
# Run time vs build time: BCC at run time is python3-bpfcc (pure Python, ctypes)
# over libbpfcc, which compiles with the LLVM and clang libraries it links
# (libllvm14, libclang-cpp14: most of the image) and brings its own copies of
# clang's built-in headers; it needs no compiler, no libc headers
# (linux-libc-dev) and none of bpfcc-tools. Austin is a static musl binary that
# needs only musl's loader. procps gives pgrep, with which compose and the
# Kubernetes manifests find the app's PID. The final image starts from scratch:
# a layer of those packages, trimmed by scripts/trim-root.sh (no apt, dpkg,
# perl, time zones or charset converters; ICU's data an empty stub), and one of
# the venv, with none of the base image's layers under them.

ARG BASE=debian:bookworm-slim

# ---- build: the venv (uv sync of the lock, no dev group), Austin, ICU stub ----
FROM ${BASE} AS build

ARG AUSTIN_VERSION=4.0.0
ENV DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv unzip gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# ICU's data as an empty stub (scripts/icu-stubdata.c says why nothing needs it).
COPY scripts/icu-stubdata.c /tmp/
RUN gcc -shared -fPIC -O2 -s -Wl,-soname,libicudata.so.72 \
        -o /opt/libicudata.so.72 /tmp/icu-stubdata.c

# uv in a venv of its own (Debian's Python refuses pip installs outside a venv).
RUN python3 -m venv /opt/tools \
    && /opt/tools/bin/pip install --no-cache-dir --disable-pip-version-check uv

WORKDIR /opt/otel-blocksnoop
COPY pyproject.toml uv.lock README.md LICENSE ./
COPY otel_blocksnoop ./otel_blocksnoop
COPY bpf ./bpf
# The locked runtime dependencies (not the dev group) and the project itself as
# a wheel (bpf/ inside it), on Debian's Python 3.11, byte-compiled now: the
# image's root is read-only at run time.
RUN UV_PYTHON=/usr/bin/python3 UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 \
        /opt/tools/bin/uv sync --frozen --no-dev --no-editable --no-cache \
    && rm -rf .venv/lib/python3*/site-packages/pip* .venv/bin/pip* .venv/bin/activate*

# bcc in the venv: a directory holding only a link to Debian's bcc package (in
# the final stage), so the rest of dist-packages cannot shadow the venv's own.
RUN mkdir -p .venv/system-bcc \
    && ln -s /usr/lib/python3/dist-packages/bcc .venv/system-bcc/bcc \
    && .venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
        | xargs -I{} sh -c 'echo /opt/otel-blocksnoop/.venv/system-bcc > {}/otel_blocksnoop_system_bcc.pth'

# Austin: the musllinux build (the manylinux one needs glibc 2.38; bookworm has 2.36).
RUN tmp="$(mktemp -d)" \
    && /opt/tools/bin/pip download -q --no-cache-dir --disable-pip-version-check --no-deps \
        --only-binary :all: --platform musllinux_1_1_x86_64 \
        -d "$tmp" "austin-dist==${AUSTIN_VERSION}" \
    && unzip -q -o -j "$tmp"/austin_dist-*.whl \
        "austin_dist-${AUSTIN_VERSION}.data/scripts/austin" -d "$tmp" \
    && install -m 0755 "$tmp/austin" .venv/bin/austin \
    && rm -rf "$tmp"

# ---- root: the run-time packages, then trimmed to what runs -------------------
FROM ${BASE} AS root

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-bpfcc libbpfcc musl procps \
    && rm -rf /var/lib/apt/lists/*
COPY scripts/trim-root.sh /tmp/
COPY --from=build /opt/libicudata.so.72 /tmp/
RUN sh /tmp/trim-root.sh \
    && mv /tmp/libicudata.so.72 "$(readlink -f /usr/lib/x86_64-linux-gnu/libicudata.so.72)" \
    && rm /tmp/trim-root.sh \
    && python3 -c 'import bcc'

# ---- run: what the sidecar runs, and only that, on scratch ---------------------
FROM scratch

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=root / /
COPY --from=build /opt/otel-blocksnoop/.venv /opt/otel-blocksnoop/.venv
RUN /opt/otel-blocksnoop/.venv/bin/austin --version \
    && /opt/otel-blocksnoop/.venv/bin/python -c 'import bcc, otel_blocksnoop.cli'

ENV PATH=/opt/otel-blocksnoop/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /tmp
CMD ["otel-blocksnoop", "--help"]
