"""The benchmark helper scripts (scripts/gpu_check.py, scripts/seed_sweep.py) on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_gpu_check_smoke_runs_both_sides_and_reports(tmp_path):
    out = tmp_path / "gpu_check.json"
    assert _script("gpu_check").main(["--smoke", "--threads", "1", "--images", "32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["gpu"] == "none (--smoke)" and res["gpu_checkpoint_loads_on_cpu"] is True
    assert res["train_cpu"]["model_version"] == res["train_cuda"]["model_version"]  # both on the CPU: same model
    agree = res["score_agreement"]
    assert agree["max_abs_diff_over_spread"] == 0.0 and agree["top10_overlap"] == 10
    assert [r["batch"] for r in res["scoring"]] == [32, 128] and all(r["cpu_slices_per_s"] > 0 for r in res["scoring"])


def test_gpu_check_without_cuda_says_so(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _script("gpu_check").main(["--out", "unused.json"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_seed_sweep_refuses_a_rescore_that_trains_differently(tmp_path):
    (tmp_path / "adv.json").write_text(json.dumps({"loss": {"adv_weight": 0.2}}))
    (tmp_path / "dw.json").write_text(json.dumps({"scoring": {"disc_weight": 1.0}}))
    sweep = _script("seed_sweep")
    common = ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--variant", "base="]
    with pytest.raises(SystemExit, match="trains differently"):
        sweep.main([*common, "--rescore", f"bad=base:{tmp_path / 'adv.json'}"])
    with pytest.raises(SystemExit, match="unknown base"):
        sweep.main([*common, "--rescore", f"x=nope:{tmp_path / 'dw.json'}"])
    # a scoring-only change is accepted; nothing to run is summarised as nothing
    assert sweep.main([*common, "--rescore", f"dw=base:{tmp_path / 'dw.json'}", "--summary-only"]) == 0
    assert (tmp_path / "o" / "summary.md").read_text().startswith("seeds [0, 1, 2]")
