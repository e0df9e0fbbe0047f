"""Masks and targeted patch ranking on hand-computed examples."""

from __future__ import annotations

import pytest
import torch

from patchrank.model import BoxMaskGenerator, complementary_masks, rank_weights, ranked_sum


@pytest.mark.parametrize("h,w,cell,period", [(32, 32, 4, 2), (64, 48, 8, 2), (30, 20, 7, 3), (16, 16, 16, 1)])
def test_complementary_masks_cover_every_pixel_exactly_once(h, w, cell, period):
    m = complementary_masks(h, w, cell, period)
    assert m.shape == (period**2, 1, h, w)
    assert torch.equal(m.sum(0), torch.ones(1, h, w))


def test_complementary_mask_hides_squares_with_visible_neighbours():
    m = complementary_masks(16, 16, 4, 2)[0, 0]
    assert m[0:4, 0:4].all() and not m[0:4, 4:8].any() and not m[4:8, 0:4].any() and m[8:12, 8:12].all()


def test_box_masks_seeded_and_within_config():
    a = BoxMaskGenerator(seed=3, grid_prob=0.0)(6, 64, 64)
    b = BoxMaskGenerator(seed=3, grid_prob=0.0)(6, 64, 64)
    c = BoxMaskGenerator(seed=4, grid_prob=0.0)(6, 64, 64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    frac = a.mean(dim=(1, 2, 3))
    assert (frac > 0).all() and (frac <= 4 * 0.25**2 + 1e-6).all()  # <= max_boxes * max_size^2
    one = BoxMaskGenerator(seed=0, min_boxes=1, max_boxes=1, min_size=0.25, max_size=0.25, grid_prob=0.0)(3, 32, 32)
    assert torch.equal(one.sum(dim=(1, 2, 3)), torch.full((3,), 64.0))  # one 8x8 box each


def test_box_mask_state_round_trip():
    g = BoxMaskGenerator(seed=9)
    g(2, 32, 32)
    state = g.state_dict()
    nxt = g(2, 32, 32)
    g2 = BoxMaskGenerator(seed=0)
    g2.load_state_dict(state)
    assert torch.equal(g2(2, 32, 32), nxt)


def test_rank_weights_hand_computed():
    # k=3, decay=0.5, floor=0 over 5 patches: raw [1, .5, .25, 0, 0] / 1.75
    w = rank_weights(5, k=3, decay=0.5)
    assert torch.allclose(w, torch.tensor([1, 0.5, 0.25, 0, 0]) / 1.75)
    # floor=1: raw [2, 1.5, 1.25, 1, 1] / 6.75
    assert torch.allclose(rank_weights(5, 3, 0.5, floor=1.0), torch.tensor([2, 1.5, 1.25, 1, 1]) / 6.75)
    # k >= n and decay 1: the plain mean
    assert torch.allclose(rank_weights(4, 10, 1.0), torch.full((4,), 0.25))
    with pytest.raises(ValueError):
        rank_weights(4, 0, 0.5)


def test_ranked_sum_sorts_and_respects_validity():
    v = torch.tensor([[0.0, 4.0, 1.0, 2.0]])
    # sorted [4, 2, 1, 0]; k=2, decay=.5 -> (4*1 + 2*.5) / 1.5
    assert torch.allclose(ranked_sum(v, 2, 0.5), torch.tensor([5.0 / 1.5]))
    valid = torch.tensor([[True, False, True, True]])  # the 4.0 is background
    assert torch.allclose(ranked_sum(v, 2, 0.5, valid=valid), torch.tensor([(2 + 0.5) / 1.5]))
    # mixed valid counts in one batch
    v2 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    val2 = torch.tensor([[True, True, True], [False, True, True]])
    assert torch.allclose(ranked_sum(v2, 1, 1.0, valid=val2), torch.tensor([3.0, 2.0]))


def test_ranked_sum_gradient_flows_to_top_patches_only():
    v = torch.tensor([[0.1, 0.9, 0.5, 0.2]], requires_grad=True)
    ranked_sum(v, 2, 1.0).sum().backward()
    assert torch.allclose(v.grad, torch.tensor([[0.0, 0.5, 0.5, 0.0]]))


def test_hot_region_ranks_first_and_raises_image_score():
    torch.manual_seed(0)
    base = torch.randn(1, 16, 16) * 0.1
    hot = base.clone()
    hot[0, 5:7, 9:11] += 3.0
    flat_base, flat_hot = base.flatten(1), hot.flatten(1)
    top4 = torch.topk(flat_hot, 4).indices[0].tolist()
    assert sorted(divmod(i, 16) for i in top4) == [(5, 9), (5, 10), (6, 9), (6, 10)]
    ranked_gain = ranked_sum(flat_hot, 4, 0.8) - ranked_sum(flat_base, 4, 0.8)
    mean_gain = flat_hot.mean() - flat_base.mean()
    assert ranked_gain.item() > 2.5  # the region drives the ranked score...
    assert ranked_gain.item() > 20 * mean_gain.item()  # ...where the mean averages it away


def test_masked_composite_takes_each_pixel_from_the_forward_that_hid_it_b_images_at_a_time():
    from patchrank.model import ScoringConfig, build_networks
    from patchrank.model.masks import hideable
    from patchrank.model.method import masked_composite

    torch.manual_seed(0)
    recon, _ = build_networks({"recon": {"in_channels": 2, "base_channels": 4, "depth": 2}, "disc": {"in_channels": 2}})
    recon.eval()
    x = torch.randn(3, 2, 32, 32)
    x[:, :, :5] = -1.0  # background rows: never hidden, kept as they are
    cfg = ScoringConfig(grid_cell=4, grid_period=2)
    calls = []

    def spy(xb, mask):
        calls.append(len(xb))
        return recon(xb, mask)

    with torch.no_grad():
        got = masked_composite(spy, x, cfg)
        # The same composite from one forward over all B*M masked copies.
        masks = complementary_masks(32, 32, 4, 2)
        hidden = masks[None] * hideable(x)[:, None]  # (B, M, 1, H, W)
        rec = recon(x.repeat_interleave(4, 0), hidden.reshape(12, 1, 32, 32)).view(3, 4, 2, 32, 32)
        want = (rec * hidden).sum(1) + (1.0 - hidden.sum(1)) * x
    assert calls == [3, 3, 3, 3]  # B images per forward, one forward per mask
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(got[:, :, :5], x[:, :, :5])
