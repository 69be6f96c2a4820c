# imgsync as a container: one job per portal (see docs/fleet.md and deploy/kubernetes/).
#
#   docker build -t imgsync:0.1.0 .
#   docker run --rm -v imgsync-acme:/data -e IMGSYNC_WEBHOOK_URL=... imgsync:0.1.0 sync --csv /data/pairs.csv
#
# Only plain `docker build` steps: no BuildKit-only syntax, no network beyond PyPI for the dependencies.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgsync ./imgsync
RUN pip install . && rm -rf /src

# A user of its own; /data holds the database (imgsync.db) and the files (images/).
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin imgsync \
    && mkdir -p /data && chown imgsync:imgsync /data && chmod 700 /data

ENV HOME=/data \
    IMGSYNC_DEST=/data/images \
    IMGSYNC_DB=/data/imgsync.db
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001

ENTRYPOINT ["imgsync"]
CMD ["--help"]
