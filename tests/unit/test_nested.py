"""Nested cross-validation: fold logic without leakage, the choice rule, the candidate set."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from patchrank.pipeline.data.datasets import DatasetError, Record
from patchrank.pipeline.data.discover import config_for, discover
from patchrank.pipeline.evaluation import nested
from patchrank.pipeline.evaluation.folds import ABLATIONS, make_folds
from patchrank.pipeline.settings import TrainConfig, merge


def _isic(root, n_benign=12, n_malignant=9):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_benign + n_malignant):
        name = f"ISIC_{i:07d}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
        rows.append(f"{name},{'benign' if i < n_benign else 'malignant'}")
    (root / "labels.csv").write_text("image_id,label\n" + "\n".join(rows) + "\n")
    return discover(root)


def test_inner_splits_never_hold_outer_test_subjects():
    recs = [Record(f"{s}.jpg", s, label=int(s.startswith("m"))) for s in [f"b{i}" for i in range(20)] + [
        f"m{i}" for i in range(13)]]  # fmt: skip
    for i, test in enumerate(make_folds(recs, 3, seed=0)):
        inner = nested.inner_splits(recs, test, 3, nested.inner_seed(0, i))
        flat = [s for f in inner for s in f]
        assert not set(flat) & set(test)
        assert sorted(flat) == sorted(r.subject for r in recs if r.subject not in test) and len(set(flat)) == len(flat)
        assert all(any(s.startswith("m") for s in f) and any(s.startswith("b") for s in f) for f in inner)
        assert inner == nested.inner_splits(recs, test, 3, nested.inner_seed(0, i))
    assert nested.inner_seed(0, 1) != nested.inner_seed(0, 2) != nested.inner_seed(1, 1)


def test_selection_trains_on_benign_outer_training_images_only(tmp_path, monkeypatch):
    records = _isic(tmp_path / "isic")
    cfg, preset = config_for(records, None, {"preprocess": {"image_size": 32}})
    assert preset == "dermoscopy"
    label = {r.subject: r.label for r in records}
    outer_test = make_folds(records, 3, seed=0)[0]
    seen, seeds = [], []

    def fake_trained(path, fold, cfg, gpu):  # records what each inner training would see
        train = set(fold.train.subjects) | set(fold.val.subjects)
        tested = {t.record.subject for t in fold.test}
        seen.append((train, tested, set(fold.test_subjects)))
        seeds.append((cfg.seed, path.name, fold.index, tuple(sorted(fold.val.subjects))))
        return path

    scores = {"preset": 0.70, "no_shape": 0.695, "features_only": 0.65}  # every other candidate 0.6
    monkeypatch.setattr(nested, "_trained", fake_trained)

    def fake_auroc(path, fold, cfg_, name, dev, seed):  # pairs: inner fold adds 0.01 x index, a seed 0.1 x offset
        return scores.get(name, 0.6) + 0.01 * fold.index + 0.1 * (cfg_.seed - cfg.seed)

    monkeypatch.setattr(nested, "_auroc", fake_auroc)
    kw = dict(index=0, inner_k=3, fold_seed=0, workdir=tmp_path, gpu=False, log=lambda s: None)
    chosen, inner, splits = nested.select(records, outer_test, cfg, nested.DERMOSCOPY, seeds=1, **kw)
    assert len(seen) == 3 * 3  # 3 inner folds x 3 trainings (preset, no discriminator, ranked)
    for train, tested, test_subjects in seen:
        assert train and all(label[s] == 0 for s in train)  # benign-only training
        assert not (train | tested) & set(outer_test)  # the outer test fold never reaches selection
        assert not train & tested and tested == test_subjects
        assert any(label[s] == 1 for s in tested)
    assert chosen == "preset" and inner["preset"] == pytest.approx([0.70, 0.71, 0.72])  # no_shape below on every pair
    assert {s[0] for s in seeds} == {cfg.seed}
    scores["no_shape"] = 0.70
    seeds.clear()
    chosen, inner, _ = nested.select(records, outer_test, cfg, nested.DERMOSCOPY, seeds=2, **kw)
    assert chosen == "no_shape"  # level and simpler
    assert inner["preset"] == pytest.approx([0.70, 0.71, 0.72, 0.80, 0.81, 0.82])  # seed-major, inner folds in order
    assert sorted({s[0] for s in seeds}) == [cfg.seed, cfg.seed + 1] and len(seeds) == 3 * 3 * 2
    assert all(name.endswith("_s1.pt") == (s == cfg.seed + 1) for s, name, _, _ in seeds)  # seed 0 keeps old names
    val = {(s, j): v for s, _, j, v in seeds}  # each seed draws its own validation subjects, like its training
    assert any(val[(cfg.seed, j)] != val[(cfg.seed + 1, j)] for j in range(3))
    with pytest.raises(ValueError, match="at least 1 training seed"):
        nested.select(records, outer_test, cfg, nested.DERMOSCOPY, seeds=0, **kw)


def test_choose_prefers_fewer_components_only_when_level_within_one_standard_error():
    simple = {"full": 3, "simple": 2, "simplest": 1}
    # simple: paired differences -0.01, +0.01, -0.006 -> mean -0.002, se 0.006: level; simplest always lower
    inner = {"full": [0.80, 0.78, 0.79], "simple": [0.79, 0.79, 0.784], "simplest": [0.70, 0.72, 0.71]}
    assert nested.choose(inner, simple) == "simple"
    # simple below on every pair (-0.01, -0.012, -0.008: mean -0.010, se 0.0012): not level
    inner["simple"] = [0.79, 0.768, 0.782]
    assert nested.choose(inner, simple) == "full"
    inner["simplest"] = [0.81, 0.77, 0.79]  # differences +0.01, -0.01, 0: level, and the fewest components
    assert nested.choose(inner, simple) == "simplest"
    assert nested.choose({"a": [0.7], "b": [0.7]}, {"a": 1, "b": 1}) == "a"  # ties: the earlier one
    assert nested.choose({"a": [0.71], "b": [0.70]}, {"a": 2, "b": 1}) == "a"  # one pair: only an equal one is level
    with pytest.raises(ValueError, match="same number of paired"):
        nested.choose({"a": [0.7, 0.7], "b": [0.7]}, {"a": 2, "b": 1})


def test_candidate_set_and_complexity():
    from patchrank.pipeline.settings import build_config

    cfg = build_config("dermoscopy", {"preprocess": {"channels": 3}})
    names = [c.name for c in nested.DERMOSCOPY]
    assert names[0] == "preset" and not nested.DERMOSCOPY[0].over and len(set(names)) == len(names)
    cfgs = {c.name: TrainConfig(**merge(cfg.model_dump(), c.over)) for c in nested.DERMOSCOPY}
    assert cfgs["preset"] == cfg
    assert not {"default_scoring", "uniform_loss+preset"} & set(cfgs)  # measured and dropped (pass 11)
    c = {n: nested.complexity(v) for n, v in cfgs.items()}
    assert c["preset"] == c["no_shape"] + 1 == c["features_only"] + 2 == c["no_discriminator+preset"] + 1
    assert c["no_discriminator+features_only"] == c["features_only"] - 1
    assert c["ranked+preset"] == c["preset"] + 2 == c["ranked+no_shape"] + 1  # ranked score and ranked loss
    assert len(nested._groups(cfgs)) == 3  # three trainings; every other candidate only rescores


def test_nested_option_refuses_presets_without_candidates(tmp_path, capsys):
    from patchrank.pipeline.cli import main

    root = tmp_path / "isic"
    _isic(root)
    args = ["bench", "quality", "--data", str(root), "--nested", "2", "--out", str(tmp_path / "o")]
    assert main([*args, "--preset", "brain-mri"]) == 2
    assert "candidate settings for dermoscopy, not brain-mri" in capsys.readouterr().err
    assert main([*args, "--nested-seeds", "0"]) == 2
    assert "--nested-seeds needs at least 1 training seed, got 0" in capsys.readouterr().err


def test_merge_joins_outer_folds_run_apart():
    base = {"folds": [["a"], ["b"]], "config": {}, "fold_seed": 0, "inner_folds": 2, "train_seeds": 3,
            "candidates": {"preset": {}}}  # fmt: skip

    def part(i, auc):
        outer = [{"fold": i, "chosen": "preset", "inner_splits": [], "inner_auroc": {"preset": [0.7]}}]
        return {**base, "outer": outer,
                "runs": [{"method": m, "fold": i, "image_auroc": auc, "image_auprc": auc}
                         for m in ("patchrank_nested", "patchrank")], "wall_seconds": 10.0}  # fmt: skip

    res = nested.merge_nested([part(1, 0.8), part(0, 0.6)])
    assert [o["fold"] for o in res["outer"]] == [0, 1] and res["wall_seconds"] == 20.0
    assert res["summary"]["patchrank_nested"]["image_auroc"] == pytest.approx([0.7, 0.1, 2])
    with pytest.raises(DatasetError, match="cannot merge"):
        nested.merge_nested([part(0, 0.6), {**part(1, 0.8), "train_seeds": 1}])
    # runs made before pass 22 carry "tolerance" instead of "train_seeds": they merge among themselves only
    from patchrank.pipeline.bench.quality_nested import tables

    old = [
        {k: v for k, v in {**part(i, a), "tolerance": 0.01}.items() if k != "train_seeds"}
        for i, a in ((0, 0.6), (1, 0.8))
    ]
    assert "(tolerance 0.01)" in tables(nested.merge_nested(old))
    assert "(paired, 3 training seeds)" in tables(res)
    with pytest.raises(DatasetError, match="cannot merge"):
        nested.merge_nested([old[0], part(1, 0.8)])


def test_outer_training_is_shared_with_the_method_that_trains_the_same():
    from patchrank.pipeline.settings import build_config

    cfg = build_config("dermoscopy", {"preprocess": {"channels": 3}})
    cfgs = {c.name: TrainConfig(**merge(cfg.model_dump(), c.over)) for c in nested.DERMOSCOPY}
    which = {n: nested._method_training(c, cfg, ["a"], False) for n, c in cfgs.items()}
    assert which["no_shape"] == which["preset"] == "patchrank"
    unmasked = TrainConfig(**merge(cfg.model_dump(), ABLATIONS["no_masking"]))
    assert nested._method_training(unmasked, cfg, ["a"], False) == "no_masking"
    assert which["ranked+no_shape"] == "nested"  # no benchmark row trains with the ranked loss
    assert which["no_discriminator+no_appearance"] == "no_discriminator"
    masked = TrainConfig(**merge(cfg.model_dump(), {"masks": {"max_boxes": 2}}))
    assert nested._method_training(masked, cfg, ["a"], False) == "nested"
