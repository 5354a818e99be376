"""MLflow: where the store is, how runs are grouped, and what every stage logs.

Runs nest three deep so that the UI shows them together:
  experiment run  (one per DVC experiment, or git commit + params hash)
    pair run      (one per class, setting and seed)
      stage run   (one per stage execution, with its per-epoch metrics and figures)
The store is sqlite at the repository root, found from DVC_ROOT, so that `dvc exp run --temp/--queue`
(which run in .dvc/tmp/exps/...) log to the same place. MLFLOW_TRACKING_URI overrides it.
Every call is retried; if the store stays unusable the stage fails clearly, or, with
tracking.continue_on_failure, goes on with a loud warning. Outputs in data/ and reports/ never depend on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from anomem.errors import TrackingError
from anomem.params import Params, flatten
from anomem.runtime import environment, git_commit, project_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
# MLflow's own HTTP retries last minutes by default; ours are short and say what failed.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def experiment_key(params: Params) -> str:
    """Groups the stage runs of one experiment: the DVC experiment name, else the commit and a params hash."""
    name = os.environ.get("DVC_EXP_NAME")
    digest = hashlib.sha1(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    key = name or f"{git_commit(project_root())[:12]}-p{digest}"
    return re.sub(r"[^A-Za-z0-9_.:+-]", "_", key)  # it goes into MLflow filter strings


class Tracker:
    """One MLflow run; every call is retried and then fails or warns, as tracking params say."""

    def __init__(self, client, run_id: str | None, retries: int, continue_on_failure: bool):
        self.client, self.run_id = client, run_id
        self.retries, self.continue_on_failure = retries, continue_on_failure

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.active:
            return None
        return _retry(what, fn, self.retries, self.continue_on_failure, on_give_up=self._disable)

    def _disable(self) -> None:
        self.run_id = None

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.active:  # tracking off: MLflow need not even be installed
            return
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self._call(
                "log params",
                lambda chunk=flat[i : i + 100]: self.client.log_batch(self.run_id, params=chunk),
            )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.active:  # tracking off: MLflow need not even be installed
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in flatten(metrics).items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)
        ]
        for i in range(0, len(items), 500):
            self._call(
                "log metrics",
                lambda chunk=items[i : i + 500]: self.client.log_batch(self.run_id, metrics=chunk),
            )

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.active:  # tracking off: MLflow need not even be installed
            return
        from mlflow.entities import RunTag

        self._call(
            "set tags",
            lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]),
        )

    def log_figure(self, fig, artifact_file: str) -> None:
        self._call(
            "log figure",
            lambda: self.client.log_figure(self.run_id, fig, artifact_file),
        )

    def finish(self, status: str = "FINISHED") -> None:
        self._call("end the run", lambda: self.client.set_terminated(self.run_id, status))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(
            "log artifact",
            lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
        )


def _retry(
    what: str,
    fn: Callable[[], Any],
    retries: int,
    continue_on_failure: bool,
    on_give_up: Callable[[], None] | None = None,
) -> Any:
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:  # MLflow raises many kinds (sqlite locks, HTTP, OS errors)
            if attempt < retries:
                time.sleep(delay)
                delay *= 2
                continue
            message = f"MLflow store {tracking_uri()} failed to {what} after {retries + 1} tries: {type(exc).__name__}: {exc}"
            if not continue_on_failure:
                raise TrackingError(
                    message + " (set tracking.continue_on_failure: true to go on without it, or tracking.enabled: false)"
                ) from None
            warnings.warn(
                "\n"
                + "!" * 72
                + f"\nTRACKING DISABLED FOR THIS STAGE: {message}\nResults are still written to data/ and reports/.\n"
                + "!" * 72,
                stacklevel=2,
            )
            print(f"anomem: WARNING: tracking disabled: {message}", file=sys.stderr)
            if on_give_up is not None:
                on_give_up()
            return None


def _find_or_create(client, experiment_id: str, tags: dict[str, str], name: str, parent_id: str | None) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    all_tags = dict(tags)
    if parent_id:
        all_tags["mlflow.parentRunId"] = parent_id
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


def _open_client(params: Params):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    if exp is not None:
        return client, exp.experiment_id
    artifacts = (project_root() / "mlartifacts").as_uri()
    try:
        return client, client.create_experiment(params.tracking.experiment_name, artifact_location=artifacts)
    except Exception:  # created meanwhile by a parallel stage
        return client, client.get_experiment_by_name(params.tracking.experiment_name).experiment_id


def _parent_run(client, experiment_id: str, key: str, pair: str | None) -> str:
    """The experiment run of `key`, or its pair run when `pair` is given; made on first use."""
    parent = _find_or_create(
        client,
        experiment_id,
        {"anomem.level": "experiment", "anomem.key": key},
        f"exp {key}",
        None,
    )
    if pair is None:
        return parent
    return _find_or_create(
        client,
        experiment_id,
        {"anomem.level": "pair", "anomem.key": key, "anomem.pair": pair},
        pair,
        parent,
    )


@contextlib.contextmanager
def stage_run(params: Params, stage: str, pair: str | None = None, seed: int | None = None) -> Iterator[Tracker]:
    """A run for one stage execution, nested under its experiment (and pair) run. A no-op when tracking is off."""
    t = params.tracking
    if not t.enabled:
        yield Tracker(None, None, 0, True)
        return

    def open_runs():
        client, exp_id = _open_client(params)
        key = experiment_key(params)
        parent = _parent_run(client, exp_id, key, pair)
        tags = {
            "anomem.level": "stage",
            "anomem.key": key,
            "anomem.stage": stage,
            "mlflow.parentRunId": parent,
        }
        if pair is not None:
            tags["anomem.pair"] = pair
        run_id = client.create_run(exp_id, run_name=f"{stage}" + (f" {pair}" if pair else ""), tags=tags).info.run_id
        return client, run_id, (parent if pair is not None else None)

    opened = _retry("open a run", open_runs, t.retries, t.continue_on_failure)
    if opened is None:
        yield Tracker(None, None, 0, True)
        return
    client, run_id, parent = opened
    tracker = Tracker(client, run_id, t.retries, t.continue_on_failure)
    commit = git_commit(project_root())
    tracker.set_tags(
        {
            "git_commit": commit,
            "seed": seed if seed is not None else "",
            "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
            **{f"version.{k}": v for k, v in environment().items()},
        }
    )
    tracker.log_params(params.to_dict())
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.finish(status)
        if parent is not None:  # the pair run: done as far as this stage goes
            Tracker(client, parent, t.retries, t.continue_on_failure).finish(status)


def parent_tracker(params: Params, pair: str | None = None) -> Tracker:
    """The experiment run (pair=None) or a pair run, to log aggregates into."""
    t = params.tracking
    if not t.enabled:
        return Tracker(None, None, 0, True)

    def find():
        client, exp_id = _open_client(params)
        return client, _parent_run(client, exp_id, experiment_key(params), pair)

    found = _retry("find the parent run", find, t.retries, t.continue_on_failure)
    if found is None:
        return Tracker(None, None, 0, True)
    return Tracker(found[0], found[1], t.retries, t.continue_on_failure)
