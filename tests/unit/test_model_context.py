"""Through-plane context (model.scoring.slice_context) and where it is applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modeldoubles import CopyRecon, ZeroDisc

from patchrank.model import ScoringConfig
from patchrank.model.scoring import gate_maps, score_images, slice_context
from patchrank.pipeline.data.datasets import Record
from patchrank.pipeline.data.preprocess import Prepared
from patchrank.pipeline.evaluation.harness import EvalScan, SliceResult, evaluate_scorer
from patchrank.pipeline.scan_scoring import in_context

CFG = ScoringConfig(context_radius=3, context_decay=1.0)


def test_lesion_edges_inherit_the_body_and_nothing_is_lowered():
    s = torch.tensor([0.0, 0.0, 0.0, 0.5, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    out = slice_context(s, torch.arange(11), CFG)
    assert (out >= s).all()
    assert out[3] == pytest.approx(9.0)  # the thin edge next to the lesion body
    assert out[:5].tolist() == pytest.approx([0.0, 7.0, 8.0, 9.0, 10.0])
    assert out[6:].tolist() == pytest.approx([9.0, 8.0, 7.0, 0.0, 0.0])  # beyond the radius: unchanged


def test_an_isolated_lesion_keeps_its_score_and_stays_on_top():
    s = torch.tensor([0.1, -0.2, 0.0, 6.0, 0.3, 0.0])
    out = slice_context(s, torch.arange(6), CFG)
    assert out[3] == 6.0 and int(out.argmax()) == 3
    assert (out[[2, 4]] == 5.0).all()


def test_distance_is_in_slice_numbers_not_positions_in_the_list():
    s = torch.tensor([5.0, 0.0, 0.0])
    out = slice_context(s, torch.tensor([40, 42, 50]), CFG)  # a gap between 42 and 50
    assert out.tolist() == pytest.approx([5.0, 3.0, 0.0])
    shuffled = slice_context(s[[2, 0, 1]], torch.tensor([50, 40, 42]), CFG)
    assert shuffled.tolist() == pytest.approx([0.0, 5.0, 3.0])


def test_off_single_slice_nonfinite_and_bad_input():
    s = torch.tensor([0.0, 4.0, float("-inf"), 1.0])
    assert torch.equal(slice_context(s, torch.arange(4), ScoringConfig()), s)  # default radius 0
    assert slice_context(torch.tensor([3.0]), torch.tensor([7]), CFG).tolist() == [3.0]
    out = slice_context(s, torch.arange(4), CFG)
    assert out[2] == pytest.approx(3.0) and out[3] == pytest.approx(2.0)  # -inf is not a neighbour, but is raised
    with pytest.raises(ValueError, match="slice indices"):
        slice_context(s, torch.arange(3), CFG)


def _prep(n: int, position: bool, labels=None) -> Prepared:
    pos = np.linspace(0, 1, n, dtype=np.float32) if position else np.full(n, np.nan, np.float32)
    lab = None if labels is None else np.zeros((n, 4, 4), bool)
    vox = None
    if labels is not None:
        for i, v in enumerate(labels):
            lab[i].flat[:v] = True
        vox = np.asarray(labels)
    return Prepared(
        np.zeros((n, 1, 8, 8), np.float32),
        np.ones((n, 1, 8, 8), bool),
        np.arange(10, 10 + n),
        (4, 4),
        lab,
        vox,
        None,
        pos,
    )


def test_in_context_only_for_volumes():
    s = torch.tensor([0.0, 8.0, 0.0])
    assert in_context(s, _prep(3, position=True), CFG).tolist() == pytest.approx([7.0, 8.0, 7.0])
    assert torch.equal(in_context(s, _prep(3, position=False), CFG), s)


class FakeScorer:
    """Scores slice i with value table[i] (by content), with PatchRank's context."""

    name = "fake"

    def __init__(self, cfg: ScoringConfig):
        self.cfg = cfg

    def score(self, images, foreground, position=None):
        return SliceResult(images[:, 0, 0, 0].astype(np.float64), None, None)

    def in_context(self, scores, prep):
        return in_context(torch.from_numpy(np.asarray(scores, np.float32)), prep, self.cfg).numpy()


def test_evaluation_uses_unlabelled_slices_as_neighbours():
    # slice 2 holds 10 tumour voxels (left out of the metrics) and scores high; slice 3 (16 voxels at 4x4
    # native = far above the scaled threshold) is labelled abnormal; slices 0, 5 normal.
    prep = _prep(6, position=True, labels=[0, 0, 1, 16, 0, 0])
    prep.images[:, 0, 0, 0] = [0.0, 0.2, 9.0, 1.0, 0.1, 0.0]
    scan = EvalScan(Record(path="x", subject="s1"), prep, np.array([0, -1, -1, 1, -1, 0]))
    base = evaluate_scorer(FakeScorer(ScoringConfig()), [scan])
    ctx = evaluate_scorer(FakeScorer(CFG), [scan])
    assert base.scores.tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert ctx.scores.tolist() == pytest.approx([7.0, 8.0, 6.0])  # slice 3 inherits 9 - 1 from the left-out slice 2
    assert ctx.names == ["s1:10", "s1:13", "s1:15"]


class GatedFakeScorer(FakeScorer):
    """FakeScorer with flat maps and PatchRank's per-scan gate (model.scoring.gate_maps)."""

    def score(self, images, foreground, position=None):
        res = super().score(images, foreground, position)
        return SliceResult(res.scores, np.zeros((len(images), 8, 8), np.float32), None)

    def gate_maps(self, maps, scores):
        return gate_maps(torch.from_numpy(maps), torch.from_numpy(np.asarray(scores, np.float32)), self.cfg).numpy()


def test_context_gate_uses_the_scan_scores_with_context():
    prep = _prep(6, position=True, labels=[0, 0, 1, 16, 0, 0])
    prep.images[:, 0, 0, 0] = [0.0, 0.2, 9.0, 1.0, 0.1, 0.0]
    scan = EvalScan(Record(path="x", subject="s1"), prep, np.array([0, -1, -1, 1, -1, 0]))
    gate = dict(pixel_slice_weight=0.5, pixel_slice_margin=8.5)
    per_slice = evaluate_scorer(GatedFakeScorer(ScoringConfig(context_radius=3, context_decay=1.0, **gate)), [scan])
    ctx = evaluate_scorer(
        GatedFakeScorer(ScoringConfig(context_radius=3, context_decay=1.0, pixel_slice_context=True, **gate)), [scan]
    )
    assert np.all(
        per_slice.maps == 0
    )  # without the flag score_images gates (here: a fake that does not), gate_maps passes through
    # context scores 7, 8, 6 (test above) -> each labelled slice's map lowered by 0.5 x (score - 8.5)
    assert ctx.maps[:, 0, 0].tolist() == pytest.approx([-0.75, -0.25, -1.25])
    assert all(np.all(m == m[0, 0]) for m in ctx.maps)  # one constant shift per slice


def test_score_images_leaves_the_context_gate_to_the_scan():
    x = torch.zeros(2, 1, 32, 32)
    x[1, 0, 8:24, 8:24] = 4.0
    base = dict(
        grid_cell=4,
        calibration="none",
        pixel_calibration="none",
        disc_weight=0.0,
        pixel_slice_weight=0.5,
        pixel_slice_margin=1.0,
    )
    per_slice = score_images(CopyRecon(), ZeroDisc(), x, cfg=ScoringConfig(**base), stats=None)
    later = ScoringConfig(**base, pixel_slice_context=True)
    ungated = score_images(CopyRecon(), ZeroDisc(), x, cfg=later, stats=None)
    plain = score_images(
        CopyRecon(), ZeroDisc(), x, cfg=ScoringConfig(**{**base, "pixel_slice_weight": 0.0}), stats=None
    )
    assert torch.equal(ungated.pixel_map, plain.pixel_map) and not torch.equal(per_slice.pixel_map, plain.pixel_map)
    # gating later with the same scores gives exactly the per-slice gate
    assert torch.allclose(gate_maps(ungated.pixel_map, ungated.image_scores, later), per_slice.pixel_map)
    assert torch.equal(
        gate_maps(plain.pixel_map, plain.image_scores, ScoringConfig(**base)), plain.pixel_map
    )  # flag off: identity
