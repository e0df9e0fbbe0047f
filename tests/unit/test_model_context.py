"""Through-plane context (model.scoring.slice_context) and where it is applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modeldoubles import CopyRecon, ZeroDisc, bare

from patchrank.model import ScoringConfig
from patchrank.model.evidence.context import slice_context
from patchrank.model.scoring import score_images, slice_gate
from patchrank.pipeline.data.datasets import Record
from patchrank.pipeline.data.preprocess import Prepared
from patchrank.pipeline.evaluation.harness import EvalResult, EvalScan, evaluate_scorer
from patchrank.pipeline.scan_scoring import finish_scan

CFG = bare(context_radius=3, context_decay=1.0)


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
    assert torch.equal(slice_context(s, torch.arange(4), bare()), s)  # default radius 0
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


def test_scan_context_only_for_volumes():
    s = torch.tensor([0.0, 8.0, 0.0])
    assert finish_scan(s, _prep(3, position=True), CFG).slice_scores.tolist() == pytest.approx([7.0, 8.0, 7.0])
    assert torch.equal(finish_scan(s, _prep(3, position=False), CFG).slice_scores, s)


class FakeScorer:
    """Scores slice i with value table[i] (by content); PatchRank's scan-level steps."""

    name = "fake"
    scan_level = True

    def __init__(self, cfg: ScoringConfig):
        self.cfg = cfg

    def score(self, images, foreground, position=None):
        return EvalResult(images[:, 0, 0, 0].astype(np.float64), None, None)

    def finish_scan(self, full, prep):
        maps = None if full.maps is None else torch.from_numpy(full.maps)
        scan = finish_scan(torch.from_numpy(np.asarray(full.scores, np.float32)), prep, self.cfg, maps)
        return EvalResult(scan.slice_scores.numpy(), None if maps is None else scan.maps.numpy(), full.patches)


def test_evaluation_uses_unlabelled_slices_as_neighbours():
    # slice 2 holds 10 tumour voxels (left out of the metrics) and scores high; slice 3 (16 voxels at 4x4
    # native = far above the scaled threshold) is labelled abnormal; slices 0, 5 normal.
    prep = _prep(6, position=True, labels=[0, 0, 1, 16, 0, 0])
    prep.images[:, 0, 0, 0] = [0.0, 0.2, 9.0, 1.0, 0.1, 0.0]
    scan = EvalScan(Record(path="x", subject="s1"), prep, np.array([0, -1, -1, 1, -1, 0]))
    base = evaluate_scorer(FakeScorer(bare()), [scan])
    ctx = evaluate_scorer(FakeScorer(CFG), [scan])
    assert base.scores.tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert ctx.scores.tolist() == pytest.approx([7.0, 8.0, 6.0])  # slice 3 inherits 9 - 1 from the left-out slice 2
    assert ctx.names == ["s1:10", "s1:13", "s1:15"]


class MapFakeScorer(FakeScorer):
    """FakeScorer with flat maps."""

    def score(self, images, foreground, position=None):
        res = super().score(images, foreground, position)
        return EvalResult(res.scores, np.zeros((len(images), 8, 8), np.float32), None)


def test_slice_gate_uses_the_scan_scores_with_context():
    prep = _prep(6, position=True, labels=[0, 0, 1, 16, 0, 0])
    prep.images[:, 0, 0, 0] = [0.0, 0.2, 9.0, 1.0, 0.1, 0.0]
    scan = EvalScan(Record(path="x", subject="s1"), prep, np.array([0, -1, -1, 1, -1, 0]))
    gate = dict(pixel_slice_weight=0.5, pixel_slice_margin=8.5)
    ungated = evaluate_scorer(MapFakeScorer(bare(context_radius=3, context_decay=1.0)), [scan])
    ctx = evaluate_scorer(MapFakeScorer(bare(context_radius=3, context_decay=1.0, **gate)), [scan])
    assert np.all(ungated.maps == 0)  # weight 0: the gate is off
    # context scores 7, 8, 6 (test above) -> each labelled slice's map lowered by 0.5 x (score - 8.5)
    assert ctx.maps[:, 0, 0].tolist() == pytest.approx([-0.75, -0.25, -1.25])
    assert all(np.all(m == m[0, 0]) for m in ctx.maps)  # one constant shift per slice


def test_score_images_leaves_the_slice_gate_to_the_scan():
    x = torch.zeros(2, 1, 32, 32)
    x[1, 0, 8:24, 8:24] = 4.0
    base = dict(grid_cell=4, disc_weight=0.0)
    gated_cfg = bare(**base, pixel_slice_weight=0.5, pixel_slice_margin=1.0)
    out = score_images(CopyRecon(), ZeroDisc(), x, cfg=gated_cfg, stats=None)
    plain = score_images(CopyRecon(), ZeroDisc(), x, cfg=bare(**base), stats=None)
    assert torch.equal(out.pixel_map, plain.pixel_map)  # the gate is a scan-level step
    gated = slice_gate(out.pixel_map, out.image_scores, gated_cfg)
    low = int(torch.argmin(out.image_scores))
    assert not torch.equal(gated[low], out.pixel_map[low]) and torch.all(gated <= out.pixel_map)
    assert torch.equal(slice_gate(plain.pixel_map, plain.image_scores, bare(**base)), plain.pixel_map)  # weight 0
