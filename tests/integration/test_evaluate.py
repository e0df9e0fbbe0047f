"""`patchrank evaluate` end to end on the tiny phantom model, and a quick quality bench."""

from __future__ import annotations

import json

import pytest

from patchrank.pipeline.cli import main


@pytest.mark.timeout(120)
def test_evaluate_writes_report_and_figures(tiny_checkpoint, phantom_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(phantom_dir), "--out", str(out), "--quiet"]
            + ["--fpr", "0"]  # the session checkpoint stays without an operating point (test_operating_point fits one)
        )
        == 0
    )
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_normal"] > 0 and rep["n_abnormal"] > 0 and rep["n_scans"] == 8
    assert rep["n_scans_seen_in_training"] == 8  # the session checkpoint was trained on these phantoms
    assert "WARNING: 8 of 8 scans" in capsys.readouterr().out
    for key in ("image_auroc", "image_auprc", "small_lesion_auroc", "pixel_auroc", "best_dice"):
        assert key in rep
    for key in ("image_auroc", "image_auprc", "pixel_auroc", "best_dice"):
        assert 0.0 <= rep[key] <= 1.0, key
    assert rep["n_pixels"] > 1000 and rep["model_version"]
    for png in ("roc.png", "montage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(60)
def test_evaluate_clear_error_without_labels(tiny_checkpoint, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "imgs" / "a.png")
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(tmp_path / "imgs"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cmd", ["evaluate", "bench"])
def test_gpu_flag_without_cuda_is_a_clear_error(cmd, tiny_checkpoint, phantom_dir, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint)] if cmd == "evaluate" else ["bench", "quality", "--quick"]
    rc = main([*args, "--gpu", "--data", str(phantom_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA device" in err and "Traceback" not in err


@pytest.mark.timeout(180)
def test_bench_quality_quick_on_phantoms(phantom_dir, tmp_path, monkeypatch):
    import patchrank.pipeline.training.local as tl

    trained = []
    real_fit = tl.fit_local
    monkeypatch.setattr(tl, "fit_local", lambda *a, **k: trained.append(a[3].name) or real_fit(*a, **k))
    out = tmp_path / "bench"
    rc = main(
        [
            "bench",
            "quality",
            "--data",
            str(phantom_dir),
            "--quick",
            "--epochs",
            "1",
            "--folds",
            "2",
            "--methods",
            "patchrank,no_ranking,no_context,percentile",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    # the scoring-only ablation reuses the weights, and so does no_ranking: the default training loss is uniform
    assert trained == ["patchrank_fold0.pt", "patchrank_fold1.pt"]
    res = json.loads((out / "quality.json").read_text())
    assert len(res["runs"]) == 2 * 4 and len(res["folds"]) == 2
    assert {r["method"] for r in res["runs"]} == {"patchrank", "no_ranking", "no_context", "percentile"}
    assert not set(res["folds"][0]) & set(res["folds"][1])
    table = (out / "quality.md").read_text()
    assert "| patchrank |" in table and "| percentile |" in table and "±" in table and "command:" in table


@pytest.mark.timeout(120)
def test_bench_quality_train_seed_keeps_the_folds(phantom_dir, tmp_path):
    """--train-seed reseeds training (config seed) but the folds and pixel subsample stay --seed's."""
    from patchrank.pipeline.data.discover import discover
    from patchrank.pipeline.evaluation.folds import make_folds

    records = discover(str(phantom_dir))
    runs = {}
    for name, seeds in (
        ("seed0", ["--seed", "0"]),
        ("train7", ["--seed", "0", "--train-seed", "7"]),
        ("seed7", ["--seed", "7"]),
    ):
        out = tmp_path / name
        rc = main(
            [
                "bench",
                "quality",
                "--data",
                str(phantom_dir),
                "--quick",
                "--folds",
                "2",
                *seeds,
                "--methods",
                "percentile",
                "--out",
                str(out),
            ]
        )
        assert rc == 0
        runs[name] = json.loads((out / "quality.json").read_text())
    assert runs["train7"]["folds"] == runs["seed0"]["folds"] == make_folds(records, 2, 0)
    assert runs["train7"]["config"]["seed"] == 7 and runs["seed0"]["config"]["seed"] == 0
    assert runs["train7"]["fold_seed"] == 0 and "training seed 7" in (tmp_path / "train7" / "quality.md").read_text()
    assert runs["seed7"]["fold_seed"] == 7 and runs["seed7"]["config"]["seed"] == 7


@pytest.mark.timeout(240)
def test_bench_quality_models_dir_reuses_only_the_same_training(phantom_dir, tmp_path, monkeypatch):
    """--models keeps the fold checkpoints; a second run with the same training config re-scores
    them (same numbers, nothing trained), a changed scoring setting is applied without training,
    adding the critic phase continues the kept model (resume), and a changed adversarial
    setting trains again."""
    import patchrank.pipeline.training.local as tl

    trained = []
    real_fit = tl.fit_local
    monkeypatch.setattr(
        tl, "fit_local", lambda *a, **k: trained.append((a[3].name, k.get("resume", False))) or real_fit(*a, **k)
    )
    models = tmp_path / "models"

    def bench(name: str, config: dict) -> dict:
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        rc = main(
            [
                "bench",
                "quality",
                "--data",
                str(phantom_dir),
                "--quick",
                "--epochs",
                "1",
                "--folds",
                "2",
                "--only-folds",
                "1",
                "--methods",
                "patchrank",
                "--config",
                str(tmp_path / f"{name}.json"),
                "--models",
                str(models),
                "--out",
                str(tmp_path / name),
            ]
        )
        assert rc == 0
        return json.loads((tmp_path / name / "quality.json").read_text())["runs"][0]

    first = bench("first", {"critic_epochs": 0})
    assert trained == [("patchrank_fold0.pt", False)] and (models / "patchrank_fold0.json").exists()
    again = bench("again", {"critic_epochs": 0})
    assert len(trained) == 1  # nothing trained
    assert again["image_auroc"] == pytest.approx(first["image_auroc"], abs=1e-6)
    assert again["pixel_auroc"] == pytest.approx(first["pixel_auroc"], abs=1e-6)
    rescored = bench(
        "rescored", {"critic_epochs": 0, "scoring": {"pixel_smooth": 1, "pixel_guide": 0, "pixel_close": 0}}
    )
    assert len(trained) == 1  # scoring only: same weights, new statistics and map
    assert rescored["pixel_auroc"] != pytest.approx(first["pixel_auroc"], abs=1e-6)
    bench("critic", {"critic_epochs": 1})
    assert trained[1] == ("patchrank_fold0.pt", True)  # continued, not retrained
    bench("critic", {"critic_epochs": 1})
    assert len(trained) == 2
    bench("retrained", {"critic_epochs": 1, "loss": {"adv_weight": 0.2}})
    assert trained[2] == ("patchrank_fold0.pt", False)
