"""The one GAN training step, shared by local training and every Ray Train worker, and the
critic step that follows the adversarial epochs.

One `gan_step` = one reconstructor (generator) update + one discriminator update, both on
rank-weighted per-patch losses; one `critic_step` = one discriminator update against the
frozen reconstructor's test-time composites. Both work on plain and DDP-wrapped modules.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .config import ScoringConfig, StepConfig
from .losses import lsgan_patch_loss, reconstruction_patch_loss
from .method import masked_composite


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") else m


def _autocast(amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()


def _backward_step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _disc_update(
    disc: nn.Module, opt_d: torch.optim.Optimizer, x: torch.Tensor, fake: torch.Tensor, cfg: StepConfig, amp: bool
) -> float:
    """One discriminator update on rank-weighted per-patch losses: real x (target 1) against
    `fake` (target 0), both in one concatenated forward (one DDP forward per backward)."""
    with _autocast(amp):
        logits = disc(torch.cat([x, fake])).float()  # (2B, 1, h, w)
        real_loss = lsgan_patch_loss(logits[: len(x)], 1.0)
        fake_loss = lsgan_patch_loss(logits[len(x) :], 0.0)
        loss_d = 0.5 * (cfg.rank(real_loss).mean() + cfg.rank(fake_loss).mean())
    _backward_step(loss_d, opt_d)
    return float(loss_d.detach())


def gan_step(
    recon: nn.Module,
    disc: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
    x: torch.Tensor,
    mask: torch.Tensor,
    cfg: StepConfig,
    *,
    amp: bool = False,
) -> dict[str, float]:
    """x: (B, C, H, W) normal images, mask: (B, 1, H, W) 1 = hidden -> scalar metrics.

    amp: run forward passes under CUDA autocast in bfloat16 (no loss scaling needed).
    DDP note: the generator's adversarial term goes through the *unwrapped*
    discriminator (no gradient sync for a network that is not being updated), and the
    discriminator sees real and fake in one concatenated forward, so each DDP module
    runs exactly one forward per backward.
    """
    plain_disc = _unwrap(disc)
    patch = plain_disc.patch_size

    # Generator (reconstructor) update.
    with _autocast(amp):
        x_hat = recon(x, mask)  # (B, C, H, W)
        rec = cfg.rank(reconstruction_patch_loss(x, x_hat.float(), mask, patch, cfg.masked_weight)).mean()
        loss_g = rec
        adv = torch.zeros((), device=x.device)
        if cfg.use_discriminator:
            for p in plain_disc.parameters():
                p.requires_grad_(False)
            adv = cfg.rank(lsgan_patch_loss(plain_disc(x_hat).float(), 1.0)).mean()
            for p in plain_disc.parameters():
                p.requires_grad_(True)
            loss_g = rec + cfg.adv_weight * adv
    _backward_step(loss_g, opt_g)

    metrics = {"loss_g": float(loss_g.detach()), "loss_rec": float(rec.detach()), "loss_adv": float(adv.detach())}
    if cfg.use_discriminator and opt_d is not None:
        metrics["loss_d"] = _disc_update(disc, opt_d, x, x_hat.detach(), cfg, amp)
    return metrics


def critic_step(
    recon: nn.Module,
    disc: nn.Module,
    opt_d: torch.optim.Optimizer,
    x: torch.Tensor,
    scoring: ScoringConfig,
    cfg: StepConfig,
    *,
    amp: bool = False,
) -> dict[str, float]:
    """One discriminator update against the frozen reconstructor's *test-time* output.

    After the adversarial epochs the discriminator is a snapshot of a moving game, trained on
    reconstructions under random training masks. The critic phase trains it on exactly what
    scoring compares: real normal images x (target 1) against their composites under the
    complementary grid masks (target 0, `model.method.masked_composite`), so its contrast
    evidence D(composite) - D(x) matches the final reconstructor. x: (B, C, H, W).
    """
    composite = masked_composite(_unwrap(recon), x, scoring).to(x.dtype)  # no_grad inside
    return {"loss_d": _disc_update(disc, opt_d, x, composite, cfg, amp)}
