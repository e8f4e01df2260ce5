# syntax=docker/dockerfile:1
#
# liquid-abt-exporter: the exporter and webhook receiver (`serve`), `migrate` and the operator's
# `admin`, on slim Python 3.11. The drill tools (`simulate`, `kraken-server`) are not in it: they are
# the liquid-abt-drill distribution, with an image of their own (drill/Dockerfile).
#
#   docker build -t liquid-abt-exporter \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   docker run --rm -p 9898:9898 \
#     -e DATABASE_URL=postgresql://exporter@db.example:5432/platform \
#     -e DATABASE_PASSWORD_FILE=/run/secrets/db-password \
#     -v /srv/secrets/db-password:/run/secrets/db-password:ro liquid-abt-exporter
#
# Configuration is the environment (see README.md): LIQUID_ABT_LISTEN_ADDRESS,
# LIQUID_ABT_WEB_CONFIG_FILE, LIQUID_ABT_CONFIG_FILE, LIQUID_ABT_LOG_LEVEL, LIQUID_ABT_LOG_FORMAT,
# DATABASE_URL; secrets as NAME or, better, NAME_FILE pointing at a mounted file:
# DATABASE_PASSWORD_FILE, LIQUID_ABT_WEBHOOK_TOKEN_FILE, LIQUID_ABT_ADMIN_TOKEN_FILE,
# KRAKEN_API_KEY_FILE, KRAKEN_API_SECRET_FILE. The image has no embedded PostgreSQL: give it a
# database.
#
# The base is pinned by digest (the tag is for readers); to move it, look the digest up with
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and change both stages at once here.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# --- builder: locked dependencies, then the project, installed under /install -------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The lock alone first: this layer is rebuilt when a dependency changes, not when the code does.
# Every dependency (asyncpg and bcrypt included) ships manylinux wheels for 3.11: nothing compiles.
COPY requirements/image.txt requirements/image.txt
RUN python -m pip install --no-deps --require-hashes --only-binary=:all: --prefix /install \
      -r requirements/image.txt
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# What `--version` and liquid_abt_build_info report (the image has no .git to ask).
ARG REVISION=unknown
ARG BUILD_DATE=unknown
RUN printf '{"revision": "%s", "build_date": "%s"}\n' "$REVISION" "$BUILD_DATE" \
      > exporter/BUILD_INFO \
 && python -m pip install --no-deps --prefix /install /src

# --- runtime: the installed package only; no pip run, no compilers, not root -------------------
FROM ${PYTHON_IMAGE}
ARG REVISION=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="liquid-abt-exporter" \
      org.opencontainers.image.description="Prometheus exporter and Alertmanager webhook receiver for LIQUID ABT Bitcoin purchases" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${BUILD_DATE}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIQUID_ABT_LISTEN_ADDRESS=:9898
RUN groupadd --system --gid 10001 liquid-abt \
 && useradd --system --uid 10001 --gid liquid-abt --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin liquid-abt
COPY --from=builder /install /usr/local
USER 10001:10001
EXPOSE 9898
# Liveness of `serve` where LIQUID_ABT_LISTEN_ADDRESS and LIQUID_ABT_WEB_CONFIG_FILE put it (host,
# port, https); 401 from basic auth counts as alive. /-/ready (the database) is for load
# balancers, not for restarting a process that cannot fix the database.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["liquid-abt-exporter", "healthcheck"]
ENTRYPOINT ["liquid-abt-exporter"]
CMD ["serve"]
