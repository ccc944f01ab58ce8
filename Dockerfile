# syntax=docker/dockerfile:1

# The ticketing GraphQL API, for use with an external PostgreSQL (DATABASE_URL is required:
# the embedded server of the `embedded` extra is not installed in this image).
#
#   docker build -t ticketing .
#   docker run -e DATABASE_URL=postgresql+psycopg2://user:pass@host:5432/db \
#              -e TICKETING_JWT_SECRET=... -p 8000:8000 ticketing
#
# or `docker compose up`, which also starts PostgreSQL (see docker-compose.yml).

# --- build: install the runtime dependencies into a virtual environment ---------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
# Runtime dependencies only (not the `dev` or `embedded` extras), the locked releases, each
# checked against its hash; in a layer of their own, rebuilt only when the lock changes.
COPY requirements/lock.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/lock.txt
COPY pyproject.toml setup.py README.md ./
COPY ticketing/ ./ticketing/
# Shipped inside the package (see setup.py): `ticketing migrate` needs no source tree.
COPY migrations/ ./migrations/
RUN pip install --no-cache-dir --no-deps .

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TICKETING_ENV=production \
    PATH="/opt/venv/bin:$PATH"

# A fixed numeric id, so that USER below (and Kubernetes' runAsNonRoot) need no /etc/passwd.
RUN groupadd --system --gid 10001 ticketing \
    && useradd --system --no-log-init --uid 10001 --gid ticketing --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ticketing

# The installed package is the whole application, migrations included.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# `serve` upgrades the schema to head, then serves on uvicorn.
CMD ["python", "-m", "ticketing", "serve", "--host", "0.0.0.0", "--port", "8000"]
