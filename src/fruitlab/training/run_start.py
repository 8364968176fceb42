"""What fit's MLflow run starts with (its tags), and opening it in a forked child process while `fruitlab fit`
imports the training stack, so that the tracking store is not on the path to the first training step.

Why by hand: neither MLflow nor Lightning overlaps opening a run with start-up. `fruitlab fit` spends ~6-8 s of one
core importing torch, Lightning and timm while the other core idles; importing MLflow's store (SQLAlchemy, alembic),
checking its schema and creating the run with its params, tags and config artifact costs ~1-3 s more (measured in
benchmarks/performance.md). A thread would not help (both are Python holding the GIL); a child forked before those
imports does it on the idle core and hands back the run id through a pipe.

Importing this module does not import MLflow, torch or Lightning: the CLI uses it before those load.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from fruitlab import errors
from fruitlab.config import Experiment
from fruitlab.data.fetch import resolve_data_dir
from fruitlab.data.leaks import leak_status
from fruitlab.tracking import tags

log = logging.getLogger(__name__)

RUN_ID_ENV = "FRUITLAB_RUN_ID"  # how DDP worker processes (re-launched by Lightning) find the parent's run
_WARNED: set[tuple[str, str]] = set()


def run_tags(exp: Experiment, splits: Any, data_dir: str | None) -> dict[str, str]:
    """The tags a fit run is created with: backbone, data, classes and the split's leak status (not the weights'
    source, known once the model is built: fit adds it with its first facts, training/first_step.py)."""
    return {
        tags.BACKBONE: exp.model.backbone,
        tags.DATASET: exp.data.dataset,
        tags.DATASET_FINGERPRINT: splits.fingerprint,
        tags.CLASSES: ",".join(splits.classes),
        tags.TASKS: ",".join(splits.tasks),
        **_split_tags(splits, data_dir),
    }


def _split_tags(splits: Any, data_dir: str | None) -> dict[str, str]:
    """The split scheme and whether its val/test figures can be trusted (data/leaks.py: from what is known)."""
    status = leak_status(splits, resolve_data_dir(data_dir))
    if status.leak_free is False and (splits.scheme, status.source) not in _WARNED:
        _WARNED.add((splits.scheme, status.source))  # once per process: a sweep's trials share the split
        log.warning("warning: split %r leaks (%s): its val figures are inflated", splits.scheme, status.source)
    out = {tags.SPLIT: splits.scheme, tags.SPLIT_LEAK_FREE: status.label, tags.SPLIT_LEAK_SOURCE: status.source}
    if status.copies_across is not None:
        out[tags.SPLIT_COPIES_ACROSS] = str(status.copies_across)
    return out


class EarlyRun:
    """A run being created by a forked child (tracking/runs.start_run, exactly what fit would call).

    `run_id()` waits for it; raises the child's FruitlabError (an unreachable store: the message fit would give
    itself); None when the child failed otherwise (or fork does not exist here), and then fit opens the run itself,
    so that any other error is raised in this process as it would have been."""

    def __init__(self, exp: Experiment, run_tags: dict[str, str]):
        self._pid: int | None = None
        self._read: int | None = None
        if not hasattr(os, "fork"):  # Windows: fit opens the run itself
            return
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: create the run, write its id, leave without running the parent's exit handlers
            os.close(read)
            status = 1
            try:
                from fruitlab.tracking import runs

                uri = runs.tracking_uri(exp.tracking.uri)
                answer = {"run_id": runs.start_run(exp, uri, run_tags)}
                status = 0
            except errors.FruitlabError as error:  # a clear message (an unreachable store...): the parent raises it
                answer = {"fruitlab_error": str(error), "type": type(error).__name__}
            except BaseException as error:  # anything else: the parent opens the run itself and shows what happens
                answer = {"error": f"{type(error).__name__}: {error}"}
            try:
                os.write(write, json.dumps(answer).encode())
            except BrokenPipeError:  # the parent is gone (Ctrl+C while it imported): no run is left RUNNING
                if "run_id" in answer:
                    runs.finish_run(runs.client_for(uri), answer["run_id"], "KILLED")
            finally:
                os._exit(status)
        os.close(write)
        self._pid, self._read = pid, read

    def run_id(self) -> str | None:
        if self._pid is None or self._read is None:
            return None
        chunks = []
        while chunk := os.read(self._read, 65536):
            chunks.append(chunk)
        os.close(self._read)
        os.waitpid(self._pid, 0)
        self._pid = self._read = None
        answer = json.loads(b"".join(chunks) or b"{}")
        if "fruitlab_error" in answer:
            raise getattr(errors, answer["type"], errors.FruitlabError)(answer["fruitlab_error"])
        if "error" in answer:
            log.debug("opening the run in a child failed (%s); opening it here", answer["error"])
        return answer.get("run_id")
