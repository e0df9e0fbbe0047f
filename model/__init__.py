"""PatchRank model core: pure PyTorch (imports only torch and numpy).

Masked reconstructor + PatchGAN discriminator + targeted patch ranking, the one
scoring function shared by training, evaluation and serving, and the checkpoint
format that alone rebuilds everything needed to score.
"""

from .checkpoint import CHECKPOINT_FORMAT, LoadedModel, build_networks, load_checkpoint, save_checkpoint
from .discriminator import PatchDiscriminator
from .losses import RankConfig
from .masks import BoxMaskGenerator, complementary_masks
from .ranking import rank_weights, ranked_sum
from .reconstructor import MaskedReconstructor
from .scoring import ScoreOutput, ScoreStats, ScoringConfig, fit_score_stats, score_images, volume_score
from .train_step import StepConfig, gan_step

__all__ = [
    "CHECKPOINT_FORMAT",
    "BoxMaskGenerator",
    "LoadedModel",
    "MaskedReconstructor",
    "PatchDiscriminator",
    "ScoreOutput",
    "ScoreStats",
    "ScoringConfig",
    "RankConfig",
    "StepConfig",
    "gan_step",
    "build_networks",
    "complementary_masks",
    "fit_score_stats",
    "load_checkpoint",
    "rank_weights",
    "ranked_sum",
    "save_checkpoint",
    "score_images",
    "volume_score",
]
