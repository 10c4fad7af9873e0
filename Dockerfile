# The scoring service (gunicorn + flask_api) with one registered model baked in: image tag = model version.
#
#   docker build --build-arg MLFLOW_TRACKING_URI=http://mlflow.example:5000 \
#                --build-arg MODEL_URI=models:/credit-default-taiwan_credit@champion -t credit-default .
#   docker run -p 8000:8000 credit-default
#
# Build args (used only by the throw-away `model` stage, so they are not in the final image's history):
#   MLFLOW_TRACKING_URI  the registry the model is exported from (required; an http(s) MLflow server whose
#                        artifacts it serves or that the build can read, e.g. S3 proxied by the server)
#   MODEL_URI            models:/<name>@<alias> or models:/<name>/<version>; empty = params.yaml's
#                        current profile's champion
# Run time: MODEL_URI=/app/model (the baked export) by default; `-e MODEL_URI=models:/... -e
# MLFLOW_TRACKING_URI=...` serves from a registry instead. DATABASE_URL, SECRET_KEY, ADMIN_TOKEN,
# WEB_CONCURRENCY... as in docs/serving.md.

# --- deps: the serving packages' dependency closure, hash-pinned from Pipfile.lock, into /opt/venv ---------
FROM python:3.11-slim AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY Pipfile.lock src/deploy/image_requirements.py ./
RUN python -m venv /opt/venv \
    && python image_requirements.py Pipfile.lock --python /opt/venv/bin/python --out requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps --require-hashes -r requirements.txt \
    && /opt/venv/bin/pip check

# --- model: export MODEL_URI from the registry with the project's own CLI ----------------------------------
FROM deps AS model
ARG MLFLOW_TRACKING_URI=""
ARG MODEL_URI=""
ENV MLFLOW_DISABLE_TELEMETRY=true
WORKDIR /app
COPY params.yaml ./
COPY src/__init__.py src/common.py ./src/
COPY src/config/ ./src/config/
COPY src/modeling/ ./src/modeling/
RUN if [ -z "$MLFLOW_TRACKING_URI" ]; then \
      echo "error: build arg MLFLOW_TRACKING_URI is required: the MLflow registry to export the model from" >&2; \
      exit 2; \
    fi \
    && /opt/venv/bin/python -m src.modeling.registry export "${MODEL_URI:-champion}" /app/model

# --- runtime: only what serving runs, as a non-root user -------------------------------------------------
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PARAMS_FILE=/app/params.yaml \
    MODEL_URI=/app/model \
    DATABASE_URL=sqlite:////app/var/predictions.db \
    SERVE_BIND=0.0.0.0:8000
# libgomp1: LightGBM's OpenMP runtime (the slim image lacks it). Not version-pinned (DL3008): it comes
# from the base image's Debian release, whose security updates replace the old version in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=deps /opt/venv /opt/venv
COPY params.yaml gunicorn.conf.py ./
COPY src/__init__.py src/common.py src/notify.py ./src/
COPY src/config/ ./src/config/
COPY src/data/__init__.py src/data/schemas.py ./src/data/
COPY src/modeling/ ./src/modeling/
COPY src/scoring/ ./src/scoring/
COPY src/batch/ ./src/batch/
COPY src/server/ ./src/server/
COPY src/auth/ ./src/auth/
COPY src/deploy/__init__.py src/deploy/errors.py src/deploy/smoke.py ./src/deploy/
COPY flask_api/ ./flask_api/
COPY --from=model /app/model ./model
RUN python -m compileall -q /app/src /app/flask_api /app/gunicorn.conf.py \
    && install -d -o app -g app /app/var /app/uploads
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "flask_api:create_app()"]
