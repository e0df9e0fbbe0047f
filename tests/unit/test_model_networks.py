"""Shapes, gradients and determinism of the two networks and one training step."""

from __future__ import annotations

import pytest
import torch

from patchrank.model import BoxMaskGenerator, MaskedReconstructor, PatchDiscriminator, StepConfig, gan_step


@pytest.mark.parametrize(
    "channels,size,batch",
    [(1, 16, 1), (1, 64, 2), (3, 32, 3), (4, 48, 2), (3, 128, 1)],
)
def test_shapes(channels, size, batch):
    recon = MaskedReconstructor(channels, base_channels=4, depth=4)
    disc = PatchDiscriminator(channels, base_channels=8, n_layers=3)
    x = torch.randn(batch, channels, size, size)
    mask = BoxMaskGenerator(seed=0)(batch, size, size)
    assert recon(x, mask).shape == (batch, channels, size, size)
    assert disc(x).shape == (batch, 1, size // 8, size // 8)


def test_non_square_and_depth():
    recon = MaskedReconstructor(1, base_channels=4, depth=2)
    x = torch.randn(2, 1, 32, 48)
    assert recon(x, torch.zeros(2, 1, 32, 48)).shape == (2, 1, 32, 48)


def test_bad_sizes_are_clear_errors():
    recon = MaskedReconstructor(1, base_channels=4, depth=4)
    with pytest.raises(ValueError, match="multiples of 16"):
        recon(torch.randn(1, 1, 40, 40), torch.zeros(1, 1, 40, 40))
    with pytest.raises(ValueError, match="expected x of shape"):
        recon(torch.randn(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expected x of shape"):
        PatchDiscriminator(1)(torch.randn(1, 2, 32, 32))


def test_discriminator_grid_and_receptive_field_documented():
    disc = PatchDiscriminator(1)  # defaults documented in the module docstring
    assert disc.patch_size == 8
    assert disc.receptive_field() == 54
    assert disc(torch.randn(1, 1, 128, 128)).shape == (1, 1, 16, 16)


def test_mask_is_respected():
    """Pixels under the mask cannot leak into the output: changing them changes nothing."""
    torch.manual_seed(0)
    recon = MaskedReconstructor(1, base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 8:20] = 1
    x2 = x.clone()
    x2[..., 8:20, 8:20] += 5.0
    assert torch.allclose(recon(x, mask), recon(x2, mask))


def _tiny(seed=0, channels=1):
    torch.manual_seed(seed)
    recon = MaskedReconstructor(channels, base_channels=4, depth=2)
    disc = PatchDiscriminator(channels, base_channels=8, n_layers=2)
    opt_g = torch.optim.Adam(recon.parameters(), 1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), 1e-3)
    return recon, disc, opt_g, opt_d


def test_every_parameter_gets_a_finite_gradient():
    recon, disc, _, _ = _tiny()
    grads_g: dict[str, torch.Tensor] = {}
    grads_d: dict[str, torch.Tensor] = {}

    class Capture(torch.optim.SGD):
        def __init__(self, module, store):
            super().__init__(module.parameters(), lr=0.0)
            self.module, self.store = module, store

        def step(self, closure=None):  # record grads at the moment each network updates
            for n, p in self.module.named_parameters():
                self.store[n] = None if p.grad is None else p.grad.detach().clone()
            return super().step(closure)

    x = torch.randn(4, 1, 32, 32)
    mask = BoxMaskGenerator(seed=1, grid_cell=4)(4, 32, 32)
    gan_step(recon, disc, Capture(recon, grads_g), Capture(disc, grads_d), x, mask, StepConfig())
    for store, module in ((grads_g, recon), (grads_d, disc)):
        assert set(store) == {n for n, _ in module.named_parameters()}
        for name, g in store.items():
            assert g is not None, f"{name} got no gradient"
            assert torch.isfinite(g).all(), f"{name} has a non-finite gradient"
            assert g.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_step_is_seeded_and_deterministic():
    def run():
        recon, disc, og, od = _tiny(seed=3)
        gen = BoxMaskGenerator(seed=5, grid_cell=4)
        x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(7))
        ms = [gan_step(recon, disc, og, od, x, gen(4, 32, 32), StepConfig()) for _ in range(2)]
        return ms, [p.detach().clone() for p in recon.parameters()]

    (m1, p1), (m2, p2) = run(), run()
    assert m1 == m2
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_no_discriminator_ablation_leaves_discriminator_untouched():
    recon, disc, og, od = _tiny()
    before = [p.detach().clone() for p in disc.parameters()]
    m = gan_step(
        recon, disc, og, od, torch.randn(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), StepConfig(use_discriminator=False)
    )
    assert "loss_d" not in m and m["loss_adv"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters()))


@pytest.mark.slow
def test_training_reduces_reconstruction_loss():
    recon, disc, og, od = _tiny()
    gen = BoxMaskGenerator(seed=0, grid_cell=4)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    x = (1 - (xx**2 + yy**2)).clamp(min=0)[None, None].repeat(8, 1, 1, 1)  # smooth blobs
    first = gan_step(recon, disc, og, od, x, gen(8, 32, 32), StepConfig())["loss_rec"]
    for _ in range(80):
        last = gan_step(recon, disc, og, od, x, gen(8, 32, 32), StepConfig())["loss_rec"]
    assert last < 0.5 * first  # uniform loss (the default): 0.35x after 80 steps
