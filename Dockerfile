# fruitlab: `fruitlab serve` (and fit, promote, ...) in one image. CPU build of torch; pinned by constraints.txt.
#   docker build -t fruitlab .
#   docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 fruitlab
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

# The CPU wheels of torch/torchvision (the default index would add several GB of CUDA libraries);
# build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 for a GPU image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# psycopg2 for PostgreSQL (MLflow's backend store and the prediction log), at the version constraints.txt pins
RUN pip install --extra-index-url "$TORCH_INDEX" -c constraints.txt . psycopg2-binary

RUN useradd --create-home --uid 1000 fruitlab && mkdir /work && chown fruitlab /work
USER fruitlab
WORKDIR /work
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["fruitlab", "serve", "--model", "models:/fruits@champion", "--host", "0.0.0.0", "--port", "8000", "--poll", "30s", "--wait-for-model"]
