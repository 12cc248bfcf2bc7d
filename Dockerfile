# Serving image for Cloud Run: BentoML + ONNX Runtime, no torch/CUDA (~400 MB instead of GBs).
# Build after `dvc repro` (it copies models/onnx/):  docker build -t minifig .
# Run:  docker run --rm -e PORT=8080 -p 8080:8080 minifig
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_DO_NOT_TRACK=True \
    BENTOML_HOME=/tmp/bentoml \
    PORT=8080

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
WORKDIR /app

# Dependencies first: this layer stays cached while code and model change.
COPY service/requirements.txt service/requirements.txt
RUN pip install --no-cache-dir -r service/requirements.txt

COPY stages/__init__.py stages/imaging.py stages/params.py stages/
COPY service/__init__.py service/service.py service/uploads.py service/
COPY params.yaml ./
COPY models/onnx/model.onnx models/onnx/model.json models/onnx/

USER app
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=4)"]
# Cloud Run sets $PORT; exec so that bentoml gets SIGTERM directly.
CMD ["sh", "-c", "exec bentoml serve service.service:Minifig --host 0.0.0.0 --port \"${PORT:-8080}\""]
