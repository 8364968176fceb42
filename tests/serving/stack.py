"""The deployment topology, written once: docker-compose.yml is checked against it (test_stack.py), and the
process test starts the same commands with local hosts, ports and fresh databases.

    postgres   two databases: `mlflow` (runs, registry) and `predictions` (the app's log)
    mlflow     mlflow server on PostgreSQL, artifacts proxied to a volume (--serve-artifacts)
    train      fruitlab fit + promote, logging to the server over HTTP (a one-off: `docker compose run train`)
    app        fruitlab serve, following the champion alias, logging predictions to PostgreSQL
"""

from __future__ import annotations

import shlex

MODEL_NAME = "fruits"
MODEL = f"models:/{MODEL_NAME}@champion"
MLFLOW_PORT, APP_PORT = 5000, 8000
ARTIFACTS = "/mlartifacts"  # the volume the tracking server stores artifacts in
ADMIN_ENV_FILE = "deploy/serve.env"  # FRUITLAB_ADMIN_TOKEN for the app; in neither git nor the image

# What docker-compose.yml says (service names are the hosts).
COMPOSE = {
    "mlflow_db": "postgresql+psycopg2://fruitlab:fruitlab@postgres:5432/mlflow",
    "log_db": "postgresql://fruitlab:fruitlab@postgres:5432/predictions",
    "tracking_uri": f"http://mlflow:{MLFLOW_PORT}",
    "allowed_hosts": f"mlflow:{MLFLOW_PORT},localhost:{MLFLOW_PORT},127.0.0.1:{MLFLOW_PORT}",
    "experiment": "quickstart",
    "poll": "30s",
}


def mlflow_server(backend_uri: str, artifacts: str, host: str, port: int, allowed_hosts: str) -> list[str]:
    return [
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        allowed_hosts,
        "--app-name",
        "fruitlab",
    ]


def fit(experiment: str) -> list[str]:
    return ["fruitlab", "fit", "-e", experiment]


def promote(experiment: str) -> list[str]:
    return ["fruitlab", "promote", "-e", experiment, "--model-name", MODEL_NAME]


def train_script(experiment: str) -> str:
    """The train service's shell line: fit, then promote (champion only if it beats the current one)."""
    return f"{shlex.join(fit(experiment))} && {shlex.join(promote(experiment))}"


def serve(db: str, host: str, port: int, poll: str) -> list[str]:
    return [
        "fruitlab",
        "serve",
        "--model",
        MODEL,
        "--db",
        db,
        "--host",
        host,
        "--port",
        str(port),
        "--poll",
        poll,
        "--wait-for-model",
    ]


def app_env(tracking_uri: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": tracking_uri}
