"""dvc.yaml tells the truth: each stage depends on exactly the modules its script imports, and writes where layout says."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from anomem import layout
from conftest import REPO

SRC = REPO / "src" / "anomem"


def _anomem_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "anomem":
                found |= {f"anomem.{a.name}" for a in node.names if (SRC / f"{a.name}.py").exists()}
            elif node.module.startswith("anomem."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("anomem.")}
    return found


def transitive_modules(script: Path) -> set[str]:
    """Files of src/anomem that `script` imports, directly or through other modules (the package __init__ included)."""
    todo, seen = list(_anomem_imports(script)), set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo += _anomem_imports(SRC / f"{mod.split('.', 1)[1]}.py")
    return {f"src/anomem/{m.split('.', 1)[1]}.py" for m in seen} | {"src/anomem/__init__.py"}


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_module_deps_match_the_import_graph():
    for name, stage in stages().items():
        script = stage["cmd"].split()[1]
        listed = {d for d in stage["deps"] if d.startswith("src/")}
        assert script in stage["deps"], f"{name}: its script {script} is not a dep"
        assert listed == transitive_modules(REPO / script), (
            f"{name}: dvc.yaml lists {sorted(listed)}, the script imports {sorted(transitive_modules(REPO / script))}"
        )


def test_matrix_paths_match_the_layout():
    s = stages()
    pair = "${item.cls}-${item.setting}-${item.seed}"
    assert s["train_contrastive_memory"]["outs"] == [str(layout.model_dir(pair))]
    assert s["extract_deviation_maps"]["outs"] == [str(layout.deviation_dir(pair))]
    assert s["train_detector"]["outs"] == [str(layout.scores_dir(pair))]
    assert str(layout.split_file("${item.cls}", "${item.setting}")) in s["train_contrastive_memory"]["deps"]
    assert s["prepare_data"]["outs"] == [str(layout.PREPARED)]
    for name in ("train_contrastive_memory", "extract_deviation_maps", "train_detector"):
        assert set(s[name]["matrix"]) == {"cls", "setting", "seed"}


def test_resume_checkpoints_live_outside_every_out():
    outs = [o if isinstance(o, str) else next(iter(o)) for st in stages().values() for o in st.get("outs", [])]
    resume = str(layout.resume_dir("X"))
    assert not any(resume.startswith(o.split("$")[0]) and o.split("$")[0] for o in outs)


def test_tracking_params_never_invalidate_a_stage():
    for name, stage in stages().items():
        assert not any(str(p).startswith("tracking") for p in stage.get("params", [])), name


def test_params_are_leaf_keys_never_whole_groups():
    """DVC's run cache ignores the values inside a group param (`- memory`): with DVC 3.67, `dvc exp run -S
    memory.size=16` restored the outputs of memory size 32. So every stage lists leaf keys, and each is a real one."""
    from anomem.params import Params

    leaves = {f"{g}.{k}" for g, f in Params.model_fields.items() for k in f.annotation.model_fields}
    for name, stage in stages().items():
        for key in stage.get("params", []):
            assert isinstance(key, str) and key in leaves, f"{name}: params entry {key!r} is not a leaf key of params.yaml"
