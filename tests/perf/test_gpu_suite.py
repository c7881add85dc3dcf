"""benchmarks/perf/gpu_suite.py: its search, peak table and report, and the CPU smoke run.

The smoke run is what CI can do of the GPU suite: ``--device cpu --quick`` runs every section
and every configuration once on tiny shapes. No timing is asserted, only that each section
produced complete, sane rows.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

PERF = Path(__file__).resolve().parents[2] / "benchmarks" / "perf"


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(PERF))
    try:
        yield importlib.import_module("gpu_suite")
    finally:
        sys.path.remove(str(PERF))


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA GH200 480GB", "GH200 (H100 SXM class)"),
    ("NVIDIA A100-SXM4-80GB", "A100 (SXM4 or PCIe)"),
    ("NVIDIA A100 80GB PCIe", "A100 (SXM4 or PCIe)"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L40", "L40"),
    ("NVIDIA L4", "L4"), ("NVIDIA A10G", None), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_table_matches_device_names(suite, name, expected):
    found = suite.peak_for(name)
    assert (found[0] if found else None) == expected
    if found:  # dense figures: bf16 = 2x TF32 on every listed part
        assert found[1]["bf16"] >= found[1]["tf32"] >= found[1]["fp32"] * 0.99


def test_largest_batch_doubles_then_bisects_to_the_exact_limit(suite):
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 37

    out = suite.largest_batch(fits, start=2, cap=4096, deadline=math.inf)
    assert (out["largest"], out["smallest_failing"], out["stopped"]) == (37, 38, "converged")
    assert tried[:6] == [2, 4, 8, 16, 32, 64] and len(tried) <= 6 + 5


def test_largest_batch_resolution_cap_budget_and_nothing_fits(suite):
    out = suite.largest_batch(lambda b: b <= 300, 32, 4096, math.inf)
    assert out["largest"] <= 300 < out["smallest_failing"]
    assert out["smallest_failing"] - out["largest"] <= out["largest"] // 32
    assert suite.largest_batch(lambda b: True, 2, 16, math.inf)["stopped"] == "cap"
    late = suite.largest_batch(lambda b: True, 2, 16, time.perf_counter() - 1)
    assert late == {"largest": 0, "smallest_failing": None, "trials": [],
                    "stopped": "time budget"}
    none = suite.largest_batch(lambda b: False, 8, 64, math.inf)
    assert (none["largest"], none["smallest_failing"]) == (0, 1)


def test_only_memory_and_size_errors_count_as_not_fitting(suite):
    assert suite.does_not_fit(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to ..."))
    assert suite.does_not_fit(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"))
    assert suite.does_not_fit(MemoryError())
    assert not suite.does_not_fit(RuntimeError("CUDA error: an illegal memory access was "
                                               "encountered (out of memory?)"))
    assert not suite.does_not_fit(ValueError("shape mismatch"))


def test_the_report_renders_a_partial_run(suite):
    from gpu_report import markdown

    doc = {"suite": {"mode": "full", "budget_s": 270, "elapsed_s": 12.0, "finished": False,
                     "command": "gpu_suite.py"},
           "env": {"status": "ok", "name": "NVIDIA H100 80GB HBM3", "peak_label": "H100 SXM"},
           "steps": {"status": "partial", "errors": ["densenet121/simclr/fp32: OutOfMemoryError"],
                     "rows": [{"model": "resnet18", "objective": "simclr", "precision": p,
                               "channels_last": False, "batch": 32, "shape": "96^3",
                               "steps_s": s, "vol_s": 32 * s, "data_wait_share": 0.01,
                               "host_data_share": 0.1, "peak_mem_gb": 10.0,
                               "tflop_per_step": 20.0, "mfu": m, "mfu_basis": b}
                              for p, s, m, b in (("fp32", 2.0, 0.08, "tf32"),
                                                 ("bf16", 4.0, 0.08, "bf16"))]},
           "data_path": {"status": "error", "errors": ["RuntimeError: boom"]}}
    text = markdown(doc)
    assert "NOT FINISHED" in text and "data_path error: RuntimeError: boom" in text
    assert "| bf16 >= 1.8x fp32 steps/s, resnet18 simclr | bf16 2.00x | yes |" in text
    assert "| data wait < 5 % of a step, ResNet-18 simclr bf16 | 1.0% | yes |" in text


@pytest.mark.slow
def test_quick_cpu_run_fills_every_section(tmp_path, suite):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(PERF / "gpu_suite.py"), "--device", "cpu",
                           "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=1300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert doc["suite"]["finished"] and "watchdog" not in doc["suite"]
    for name in suite.SECTIONS:
        assert doc[name]["status"] == "ok", (name, doc[name])
    assert doc["env"]["torch"] == torch.__version__ and doc["env"]["peak"] is None

    steps = doc["steps"]["rows"]
    configs = suite.step_configs(suite.quick_mode(), torch.device("cpu"))
    assert [(r["model"], r["objective"], r["precision"], r["channels_last"]) for r in steps] \
        == [c[:4] for c in configs]
    assert {c[2] for c in configs} == {"fp32", "bf16"} and len(configs) == 4 + 2
    for r in steps:
        assert r["steps"] >= 1 and 0 < r["steps_s"] < 1e4
        assert r["vol_s"] == pytest.approx(r["steps_s"] * r["batch"])
        assert 0 <= r["data_wait_share"] <= 1 and 0 <= r["host_data_share"] <= 1
        assert 0 < r["tflop_per_step"] < 1 and r["mfu"] is None and math.isfinite(r["loss"])
    flops = {(r["model"], r["objective"]): r["tflop_per_step"] for r in steps}
    assert flops[("densenet121", "simclr")] != flops[("resnet18", "simclr")]

    data = doc["data_path"]["rows"]
    assert len(data) == 2 * 5 and all(r["vol_s"] > 0 and r["volumes"] >= 2 for r in data)
    aug = doc["augment"]["rows"]
    assert len(aug) == 3 and all(r["ms_per_volume"] > 0 for r in aug)
    for r in doc["max_batch"]["rows"]:  # the quick search stops at its cap, batch 2
        assert (r["largest"], r["smallest_failing"], r["stopped"]) == (2, None, "cap"), r

    md = (tmp_path / "gpu_suite.md").read_text()
    assert "## Targets" in md and "| resnet18 | simclr | fp32 |" in md
    assert "## Largest batch that trains" in md
