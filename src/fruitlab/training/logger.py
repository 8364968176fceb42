"""Lightning's MLFlowLogger, opening the tracking store at its first write instead of before training.

Why by hand: MLFlowLogger.__init__ builds an MlflowClient, and Lightning's set-up asks every logger for its
`experiment` "to trigger lazy creation", which imports MLflow and, for a database store, MLflow's SQLAlchemy store
(SQLAlchemy, alembic, the ORM mappers): ~2.5 s of one core before the first training step (measured in
benchmarks/performance.md). fit's run is already open (by the CLI's child, training/run_start.py, or by fit) and
nothing is written before the first epoch ends, so the client waits until then. Everything else is Lightning's
(pinned 2.6.6): this sets the attributes its __init__ sets and hands out the client on first use; every method is
Lightning's. tests/training/test_fit_smoke.py checks the epoch metrics and the run's end arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger


class DeferredMLFlowLogger(MLFlowLogger):
    def __init__(self, experiment_name: str, tracking_uri: str, run_id: str) -> None:
        Logger.__init__(self)  # MLFlowLogger.__init__ minus its MlflowClient(tracking_uri)
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._tracking_uri = tracking_uri
        self._run_name = None
        self._run_id = run_id
        self.tags = None
        self._log_model = False
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callback = None
        self._prefix = ""
        self._artifact_location = None
        self._log_batch_kwargs: dict[str, Any] = {}
        self._initialized = False
        self._client: Any = None

    @property
    def _mlflow_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self._tracking_uri)
        return self._client

    @_mlflow_client.setter
    def _mlflow_client(self, client: Any) -> None:
        self._client = client

    @property
    def experiment(self) -> Any:
        """The MlflowClient (Lightning's `experiment`), made when something is first done with it."""
        return _OnFirstUse(self._made_experiment)

    @property
    def experiment_id(self) -> str | None:
        self._made_experiment()
        return self._experiment_id

    def _made_experiment(self) -> Any:
        return MLFlowLogger.experiment.fget(self)  # type: ignore[attr-defined]


class _OnFirstUse:
    """Stands for the object `make()` returns; makes it at the first attribute asked for."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make

    def __getattr__(self, name: str) -> Any:
        return getattr(self._make(), name)
