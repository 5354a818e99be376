"""The `anomem` command (check-params, profile) and the stage arguments, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anomem.errors import ParamsError
from anomem.stagekit import stage_arguments

REPO = Path(__file__).resolve().parents[1]


def anomem(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "anomem.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _write(path: Path, raw) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


# ---- check-params ---------------------------------------------------------------------------------


def test_check_params_ok(tmp_path):
    f = _write(tmp_path / "good.yaml", {"experiment": {"classes": [0, 3], "settings": ["one_class"], "seeds": [0, 1, 2]}})
    r = anomem("check-params", "--params", str(f), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    assert "2 classes x 1 settings x 3 seeds = 6 pairs" in r.stdout
    assert r.stderr.strip() == ""


def test_check_params_default_file_in_cwd(tmp_path):
    _write(tmp_path / "params.yaml", {})
    r = anomem("check-params", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "params.yaml: OK" in r.stdout
    assert "= 20 pairs" in r.stdout  # defaults: 10 classes x 2 settings x 1 seed


def test_check_params_bad_key(tmp_path):
    f = _write(tmp_path / "bad.yaml", {"memory": {"sise": 3}})
    r = anomem("check-params", "--params", str(f), cwd=tmp_path)
    assert r.returncode == 2
    assert "memory.sise" in r.stderr
    assert "memory.size" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("anomem: error:")
    assert "OK" not in r.stdout


def test_check_params_bad_value(tmp_path):
    f = _write(tmp_path / "bad.yaml", {"experiment": {"classes": [10]}})
    r = anomem("check-params", "--params", str(f), cwd=tmp_path)
    assert r.returncode == 2
    assert "experiment.classes" in r.stderr and "0..9" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_params_missing_file(tmp_path):
    r = anomem("check-params", "--params", str(tmp_path / "absent.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert "absent.yaml" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_params_invalid_yaml(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("data: [unclosed\n")
    r = anomem("check-params", "--params", str(f), cwd=tmp_path)
    assert r.returncode == 2
    assert "not valid YAML" in r.stderr
    assert "Traceback" not in r.stderr


# ---- profile --------------------------------------------------------------------------------------


def test_profile_copies_smoke(tmp_path):
    target = tmp_path / "sub" / "params.yaml"
    target.parent.mkdir()
    target.write_text("old: content\n")
    r = anomem("profile", "smoke", "--params", str(target), cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == (REPO / "profiles" / "smoke.yaml").read_bytes()
    assert str(target) in r.stdout


def test_profile_unknown_name(tmp_path):
    target = tmp_path / "params.yaml"
    r = anomem("profile", "nosuch", "--params", str(target), cwd=REPO)
    assert r.returncode == 2
    assert "'nosuch'" in r.stderr
    for name in ("cpu", "paper", "smoke"):
        assert name in r.stderr
    assert "Traceback" not in r.stderr
    assert not target.exists()


def test_profile_missing_name_is_usage_error(tmp_path):
    r = anomem("profile", cwd=tmp_path)
    assert r.returncode == 2
    assert "usage" in r.stderr.lower()


# ---- stage arguments ------------------------------------------------------------------------------


@pytest.fixture
def params_file(tmp_path) -> Path:
    return _write(tmp_path / "params.yaml", {"experiment": {"classes": [0, 3]}})


def test_stage_arguments_class_out_of_range(params_file):
    with pytest.raises(ParamsError) as info:
        stage_arguments(None, argv=["--params", str(params_file), "--cls", "10", "--setting", "one_class", "--seed", "0"])
    assert "--cls 10" in str(info.value)
    assert "0..9" in str(info.value)


def test_stage_arguments_negative_class(params_file):
    with pytest.raises(ParamsError):
        stage_arguments(None, argv=["--params", str(params_file), "--cls", "-1", "--setting", "one_class", "--seed", "0"])


def test_stage_arguments_good(params_file):
    args = stage_arguments(None, argv=["--params", str(params_file), "--cls", "3", "--setting", "unbalanced", "--seed", "2"])
    assert (args.cls, args.setting, args.seed, args.params) == (3, "unbalanced", 2, str(params_file))


def test_stage_arguments_bad_params_file(tmp_path):
    f = _write(tmp_path / "params.yaml", {"memory": {"size": 0}})
    with pytest.raises(ParamsError) as info:
        stage_arguments(None, argv=["--params", str(f), "--cls", "0", "--setting", "one_class", "--seed", "0"])
    assert "memory.size" in str(info.value)


def test_stage_arguments_unknown_setting(params_file):
    with pytest.raises(SystemExit) as info:
        stage_arguments(None, argv=["--params", str(params_file), "--cls", "0", "--setting", "three_class", "--seed", "0"])
    assert info.value.code == 2


def test_stage_arguments_without_pair(tmp_path):
    args = stage_arguments(None, pair=False, argv=["--params", str(tmp_path / "whatever.yaml")])
    assert args.params == str(tmp_path / "whatever.yaml")
    assert not hasattr(args, "cls")
