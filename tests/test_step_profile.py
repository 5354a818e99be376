"""The step profile runs on the CPU at tiny size and reports every rate and the op table."""

from __future__ import annotations

import json

from benchmarks import step_profile

from conftest import REPO


def test_step_profile_reports_each_rate_and_the_op_table(tmp_path):
    out = tmp_path / "out"
    argv = ["--params", str(REPO / "profiles" / "smoke.yaml"), "--images", "128", "--size", "16", "--epochs", "2", "--out", str(out)]

    assert step_profile.main(argv) == 0

    result = json.loads((out / "step_profile.json").read_text())
    for name in ("pipeline", "fast_kernels", "plain_simclr"):
        assert result[name]["images_per_second"] > 0 and result[name]["epochs_timed"] == 1
    assert result["augmentation_images_per_second"] > 0
    table = (out / "step_profile_ops.txt").read_text()
    assert "sorted by cpu_time_total" in table and "aten::convolution" in table
