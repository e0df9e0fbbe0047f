"""The per-pixel map's edge-preserving guided filter (model.pixelmap)."""

from __future__ import annotations

import pytest
import torch
from modeldoubles import ZeroDisc, bare

from patchrank.model import score_images
from patchrank.model.pixelmap import box_mean, guided_filter


def _step(size: int = 32, at: int = 16) -> torch.Tensor:
    g = torch.zeros(1, 1, size, size)
    g[..., at:] = 2.0
    return g


def test_flat_guide_gives_the_windowed_mean_of_the_map():
    p = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = guided_filter(p, torch.zeros_like(p), radius=2, eps=0.1)
    assert torch.allclose(out, box_mean(box_mean(p, 5), 5), atol=1e-6)  # a = 0, q = mean of the window means


def test_guided_filter_puts_the_maps_edge_back_on_the_guides_edge():
    """A map that is the step, blurred: the guide's (the image's) step makes it jump again
    at the right place (not shifted: half height still segments the step exactly)."""
    guide = _step()
    blurred = box_mean(_step() / 2.0, 9)  # the map's edge smeared over ~9 px
    out = guided_filter(blurred, guide, radius=2, eps=1e-3)
    row_b, row_o = blurred[0, 0, 16], out[0, 0, 16]
    assert float(row_b[16] - row_b[15]) < 0.12 and float(row_o[16] - row_o[15]) > 0.3  # the edge is a jump again
    assert ((row_o >= 0.5) == (torch.arange(32) >= 16)).all()  # half-height threshold: exactly the step
    assert float(out.min()) > -0.05 and float(out.max()) < 1.05  # no ringing beyond the map's own range


def test_large_eps_ignores_the_guide():
    p = box_mean(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1)), 3)
    edge = guided_filter(p, _step(), radius=2, eps=1e6)
    flat = guided_filter(p, torch.zeros_like(p), radius=2, eps=1e6)
    assert torch.allclose(edge, flat, atol=1e-4)


def test_scoring_applies_the_guided_filter_only_when_asked():
    class CopyRecon(torch.nn.Module):
        in_channels, base_channels, depth = 1, 1, 1

        def forward(self, x, mask):
            return torch.zeros_like(x)

    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 10:20, 10:20] = 2.0  # a bright lesion with sharp borders
    base = dict(grid_cell=4, pixel_smooth=7, disc_weight=0.0)
    plain = score_images(CopyRecon(), ZeroDisc(), x, cfg=bare(**base), stats=None).pixel_map[0]
    guided = score_images(
        CopyRecon(), ZeroDisc(), x, cfg=bare(**base, pixel_guide=3, pixel_guide_eps=0.01), stats=None
    ).pixel_map[0]
    jump = lambda m: float(m[15, 10] - m[15, 9])  # noqa: E731  across the lesion's left border
    assert jump(guided) > 2 * jump(plain) and float(guided[15, 9]) < float(plain[15, 9])
    with pytest.raises(ValueError):
        bare(pixel_guide_eps=0)
