# syntax=docker/dockerfile:1
#
# liquid-abt-exporter: the exporter and webhook receiver (`serve`), `migrate`, and the drill tools
# `simulate` and `kraken-server`, on slim Python 3.11.
#
#   docker build -t liquid-abt-exporter .
#   docker run --rm -p 9898:9898 \
#     -e DATABASE_URL=postgresql://exporter@db.example:5432/platform \
#     -e DATABASE_PASSWORD_FILE=/run/secrets/db-password \
#     -v /srv/secrets/db-password:/run/secrets/db-password:ro liquid-abt-exporter
#
# Configuration is the environment (see README.md): LIQUID_ABT_LISTEN_ADDRESS,
# LIQUID_ABT_CONFIG_FILE, LIQUID_ABT_LOG_LEVEL, LIQUID_ABT_LOG_FORMAT, DATABASE_URL; secrets as
# NAME or, better, NAME_FILE pointing at a mounted file: DATABASE_PASSWORD_FILE,
# LIQUID_ABT_WEBHOOK_TOKEN_FILE, LIQUID_ABT_ADMIN_TOKEN_FILE, KRAKEN_API_KEY_FILE,
# KRAKEN_API_SECRET_FILE. The image has no embedded PostgreSQL: give it a database.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: the project's wheel and its dependencies, installed under /install ---------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# Every dependency (asyncpg included) ships manylinux wheels for 3.11, so nothing is compiled.
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m pip install --no-index --find-links /wheels --prefix /install liquid-abt-exporter

# --- runtime: the installed package only; no pip run, no compilers, not root -------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="liquid-abt-exporter" \
      org.opencontainers.image.description="Prometheus exporter and Alertmanager webhook receiver for LIQUID ABT Bitcoin purchases" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIQUID_ABT_LISTEN_ADDRESS=:9898
RUN groupadd --system --gid 10001 liquid-abt \
 && useradd --system --uid 10001 --gid liquid-abt --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin liquid-abt
COPY --from=builder /install /usr/local
USER 10001:10001
EXPOSE 9898
# Liveness of `serve` on the port LIQUID_ABT_LISTEN_ADDRESS names; /-/ready (the database) is for
# load balancers, not for restarting a process that cannot fix the database.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('LIQUID_ABT_LISTEN_ADDRESS', ':9898').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/-/healthy', timeout=4)"]
ENTRYPOINT ["liquid-abt-exporter"]
CMD ["serve"]
