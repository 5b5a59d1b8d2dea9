# syntax=docker/dockerfile:1
#
# api-management container image.
#
#   docker build -t REGISTRY/trellis/api-management:VERSION .
#
# Two stages on Debian 12. The build stage runs the project's own steps,
# the ones `make build` and `make test` run on a Debian 12 machine:
# scripts/install-deps build, then a CMake Release configure and build.
# The runtime stage is debian:bookworm-slim with only the Debian packages
# that hold the shared libraries the two programs load, found by
# deploy/runtime-packages from the built binaries themselves.
# No secret is passed to the build or stored in a layer: configuration
# comes from the environment at run time (see .env.example).

FROM debian:bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# Build dependencies first: this layer is reused until install-deps changes.
COPY scripts/install-deps scripts/install-deps
RUN scripts/install-deps build \
    && rm -rf /var/lib/apt/lists/*

COPY . .
RUN cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DTRELLIS_BUILD_TESTS=OFF \
    && cmake --build build-release -j"$(nproc)"

# The programs, and the runtime packages they need.
RUN mkdir -p /out/bin \
    && cp build-release/bin/api-management build-release/bin/trellis /out/bin/ \
    && deploy/runtime-packages /out/bin/api-management /out/bin/trellis >/out/runtime-packages.txt \
    && cat /out/runtime-packages.txt

FROM debian:bookworm-slim AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
# ca-certificates for TLS to databases and brokers, tzdata for cron time zones.
# Versions are not pinned: both stages take the current Debian 12 packages,
# whose ABI the release keeps stable, and a pin would break the build as
# soon as a security update replaces the pinned version in the archive.
# linter ignore=ER0012
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive xargs -a /tmp/runtime-packages.txt \
       apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt

# A fixed non-root user; the Kubernetes manifests run as the same ids.
RUN groupadd --system --gid 10001 trellis \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin trellis

COPY --from=build /out/bin/api-management /out/bin/trellis /usr/local/bin/

# An empty working folder: the service reads .env from here, and there is
# none in the image. ./data holds the embedded default's SQLite file when
# DATABASE_URL is not set (mount a volume there to keep it).
WORKDIR /app
RUN mkdir /app/data && chown 10001:10001 /app/data
ENV HTTP_BIND=0.0.0.0 \
    HTTP_PORT=8080
EXPOSE 8080
USER 10001:10001

# `trellis health` speaks HTTP itself (no curl in the image) and checks
# http://127.0.0.1:$HTTP_PORT/health/ready: exit 0 only on a 200.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/trellis", "health", "--timeout", "3s"]

# Exec form: api-management is PID 1 and receives SIGTERM itself
# (readiness 503, SHUTDOWN_DELAY, drain within SHUTDOWN_TIMEOUT, exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/api-management"]
