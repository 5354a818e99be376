"""MLflow tracking: where the store is, how runs nest, and what happens when the store fails."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import torch

from anomem import tracking
from anomem.errors import TrackingError
from anomem.params import Params, parse_params
from anomem.runtime import git_commit, project_root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Never let a test find the repository's own mlflow.db or DVC variables."""
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


# ---- where the store is -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dvc_root, expected",
    [
        ("/x/repo/.dvc/tmp/exps/tmpabc", "/x/repo"),  # a dvc exp --temp/--queue workspace
        ("/x/repo/.dvc/tmp/exps/tmpabc/sub/dir", "/x/repo"),
        ("/x/repo", "/x/repo"),
        ("/x/repo/.dvc/tmp/other", "/x/repo/.dvc/tmp/other"),  # not an exps workspace
    ],
)
def test_project_root_from_dvc_root(monkeypatch, dvc_root, expected):
    monkeypatch.setenv("DVC_ROOT", dvc_root)
    assert project_root() == Path(expected)


def test_project_root_without_dvc_root_is_cwd(tmp_path):
    assert project_root() == tmp_path.resolve()


def test_tracking_uri_override(monkeypatch):
    monkeypatch.setenv("DVC_ROOT", "/x/repo")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"


def test_tracking_uri_default_sqlite_at_root(monkeypatch):
    monkeypatch.setenv("DVC_ROOT", "/x/repo/.dvc/tmp/exps/tmpabc")
    assert tracking.tracking_uri() == "sqlite:////x/repo/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", "/x/repo")
    assert tracking.tracking_uri() == "sqlite:////x/repo/mlflow.db"


def test_experiment_key(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    p, q = Params(), parse_params({"memory": {"size": 7}})
    assert tracking.experiment_key(p) == tracking.experiment_key(Params())
    assert tracking.experiment_key(p) != tracking.experiment_key(q)
    assert tracking.experiment_key(p).startswith(git_commit(tmp_path)[:12] + "-p")
    monkeypatch.setenv("DVC_EXP_NAME", "my-exp")
    assert tracking.experiment_key(p) == tracking.experiment_key(q) == "my-exp"


# ---- a real sqlite store ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, str]:
    """One sqlite store for the module: creating MLflow's tables takes seconds, so it is done once."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlstore")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).search_experiments()  # creates the tables
    tracking.environment()  # imports sklearn and torchvision once, here rather than in the first test
    return root, uri


@pytest.fixture
def in_store(store, monkeypatch):
    root, uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(root))
    name = f"exp-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DVC_EXP_NAME", name)
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri), name, root


def _params(**tracking_overrides) -> Params:
    return parse_params({"tracking": {"experiment_name": "anomem-test", "retries": 0, **tracking_overrides}})


def _runs(client, level: str, key: str):
    exp = client.get_experiment_by_name("anomem-test")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`anomem.level` = '{level}' and tags.`anomem.key` = '{key}'")


def test_stage_runs_nest_under_one_pair_and_one_experiment(in_store):
    client, key, root = in_store
    params = _params()
    with tracking.stage_run(params, "train_contrastive_memory", pair="3-unbalanced-0", seed=0) as t1:
        assert t1.active
        t1.log_metrics({"loss": 0.5, "health": {"rank": 12}}, step=3)
        t1.log_metrics({"loss": 0.25}, step=4)
    with tracking.stage_run(params, "train_detector", pair="3-unbalanced-0", seed=0) as t2:
        t2.log_metrics({"auroc": 0.8})

    experiments = _runs(client, "experiment", key)
    pairs = _runs(client, "pair", key)
    stages = _runs(client, "stage", key)
    assert len(experiments) == 1
    assert len(pairs) == 1
    assert len(stages) == 2
    exp_run, pair_run = experiments[0], pairs[0]
    assert pair_run.data.tags["mlflow.parentRunId"] == exp_run.info.run_id
    assert pair_run.data.tags["anomem.pair"] == "3-unbalanced-0"
    assert "mlflow.parentRunId" not in exp_run.data.tags
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == {pair_run.info.run_id}
    assert {r.info.run_id for r in stages} == {t1.run_id, t2.run_id}
    assert {r.data.tags["anomem.stage"] for r in stages} == {"train_contrastive_memory", "train_detector"}

    run = client.get_run(t1.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["memory.size"] == str(params.memory.size)
    assert run.data.params["memory.scales"] == "[2, 3]"
    assert run.data.params["tracking.experiment_name"] == "anomem-test"
    assert run.data.tags["git_commit"] == git_commit(root)
    assert run.data.tags["seed"] == "0"
    assert run.data.tags["dvc_exp"] == key
    assert run.data.tags["version.torch"] == torch.__version__
    assert run.data.tags["anomem.key"] == key
    assert run.data.metrics["loss"] == 0.25
    assert run.data.metrics["health.rank"] == 12.0
    history = client.get_metric_history(t1.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(3, 0.5), (4, 0.25)]
    assert client.get_run(t2.run_id).data.metrics["auroc"] == 0.8


def test_other_pair_shares_experiment_run(in_store):
    client, key, _ = in_store
    params = _params()
    with tracking.stage_run(params, "train", pair="0-one_class-0", seed=0):
        pass
    with tracking.stage_run(params, "train", pair="1-one_class-0", seed=0):
        pass
    with tracking.stage_run(params, "evaluate"):  # a stage with no pair hangs off the experiment run
        pass
    assert len(_runs(client, "experiment", key)) == 1
    exp_id = _runs(client, "experiment", key)[0].info.run_id
    pairs = _runs(client, "pair", key)
    assert sorted(r.data.tags["anomem.pair"] for r in pairs) == ["0-one_class-0", "1-one_class-0"]
    assert all(r.data.tags["mlflow.parentRunId"] == exp_id for r in pairs)
    evaluate = [r for r in _runs(client, "stage", key) if r.data.tags["anomem.stage"] == "evaluate"]
    assert len(evaluate) == 1
    assert evaluate[0].data.tags["mlflow.parentRunId"] == exp_id
    assert "anomem.pair" not in evaluate[0].data.tags
    assert evaluate[0].data.tags["seed"] == ""


def test_parent_tracker_finds_the_same_runs(in_store):
    client, key, _ = in_store
    params = _params()
    with tracking.stage_run(params, "train", pair="2-one_class-0", seed=0) as t:
        pass
    pair_parent = tracking.parent_tracker(params, pair="2-one_class-0")
    exp_parent = tracking.parent_tracker(params)
    assert pair_parent.run_id == client.get_run(t.run_id).data.tags["mlflow.parentRunId"]
    assert exp_parent.run_id == _runs(client, "experiment", key)[0].info.run_id
    pair_parent.log_metrics({"mean_auroc": 0.7})
    assert client.get_run(pair_parent.run_id).data.metrics["mean_auroc"] == 0.7
    assert len(_runs(client, "pair", key)) == 1


def test_failed_body_marks_run_failed(in_store):
    client, _, _ = in_store
    with pytest.raises(RuntimeError, match="diverged"):
        with tracking.stage_run(_params(), "train", pair="4-one_class-0", seed=1) as t:
            raise RuntimeError("diverged")
    assert client.get_run(t.run_id).info.status == "FAILED"


# ---- tracking off -----------------------------------------------------------------------------------


def test_disabled_tracking_does_nothing(monkeypatch, tmp_path, recwarn, capsys):
    for module in ("mlflow", "mlflow.entities", "mlflow.tracking"):  # as where MLflow is not installed (the GPU machine)
        monkeypatch.setitem(sys.modules, module, None)
    db = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    params = _params(enabled=False)
    ran = False
    with tracking.stage_run(params, "train", pair="0-one_class-0", seed=0) as t:
        ran = True
        assert not t.active and t.run_id is None
        assert t.log_metrics({"loss": 1.0}, step=1) is None
        t.log_params({"a": 1})
        t.set_tags({"b": 2})
        t.log_artifact(tmp_path / "nothing.txt")
    assert ran
    assert not tracking.parent_tracker(params).active
    assert not db.exists() and not db.parent.exists()
    assert not (tmp_path / "mlartifacts").exists()
    assert len(recwarn) == 0
    assert capsys.readouterr().err == ""


# ---- the store fails --------------------------------------------------------------------------------


@pytest.fixture
def unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "unreachable")


def test_unreachable_server_fails_clearly(unreachable):
    ran = False
    with pytest.raises(TrackingError) as info:
        with tracking.stage_run(_params(continue_on_failure=False), "train", pair="0-one_class-0", seed=0):
            ran = True
    assert not ran
    msg = str(info.value)
    assert "http://127.0.0.1:9" in msg
    assert "open a run" in msg
    assert "continue_on_failure" in msg


def test_unreachable_server_continue_on_failure(unreachable, capsys):
    ran = False
    with pytest.warns(UserWarning, match="TRACKING DISABLED"):
        with tracking.stage_run(_params(continue_on_failure=True), "train", pair="0-one_class-0", seed=0) as t:
            ran = True
            assert not t.active
            t.log_metrics({"loss": 1.0})  # a no-op, not a second failure
    assert ran
    assert "tracking disabled" in capsys.readouterr().err


def test_unreachable_server_parent_tracker(unreachable):
    with pytest.raises(TrackingError):
        tracking.parent_tracker(_params(continue_on_failure=False), pair="0-one_class-0")
    with pytest.warns(UserWarning):
        assert not tracking.parent_tracker(_params(continue_on_failure=True)).active


@pytest.fixture
def unwritable_sqlite(monkeypatch, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a regular file, not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{afile}/mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "unwritable")
    return afile


def test_unwritable_sqlite_fails_clearly(unwritable_sqlite):
    with pytest.raises(TrackingError) as info:
        with tracking.stage_run(_params(), "train", pair="0-one_class-0", seed=0):
            pass
    assert str(unwritable_sqlite) in str(info.value)
    assert unwritable_sqlite.read_text() == "a regular file, not a folder"


def test_unwritable_sqlite_continue_on_failure(unwritable_sqlite):
    ran = False
    with pytest.warns(UserWarning, match="TRACKING DISABLED"):
        with tracking.stage_run(_params(continue_on_failure=True), "train", pair="0-one_class-0", seed=0) as t:
            ran = True
            assert not t.active
    assert ran


def test_failure_after_open_disables_tracker(in_store, monkeypatch):
    # the store breaks mid-stage: with continue_on_failure the tracker warns once and goes quiet
    params = _params(continue_on_failure=True)
    with tracking.stage_run(params, "train", pair="5-one_class-0", seed=0) as t:
        assert t.active

        def broken(*_a, **_k):
            raise OSError("database is locked")

        monkeypatch.setattr(t.client, "log_batch", broken)
        with pytest.warns(UserWarning, match="log metrics"):
            t.log_metrics({"loss": 1.0})
        assert not t.active
        t.log_metrics({"loss": 2.0})  # no second warning, no error


def test_failure_after_open_raises_without_continue(in_store, monkeypatch):
    with pytest.raises(TrackingError, match="log metrics"):
        with tracking.stage_run(_params(continue_on_failure=False), "train", pair="6-one_class-0", seed=0) as t:
            monkeypatch.setattr(t.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(OSError("locked")))
            t.log_metrics({"loss": 1.0})


def test_retries_then_succeeds(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("database is locked")
        return "ok"

    assert tracking._retry("do it", flaky, retries=2, continue_on_failure=False) == "ok"
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(TrackingError, match="after 2 tries"):
        tracking._retry("do it", flaky, retries=1, continue_on_failure=False)
    assert len(calls) == 2
