"""PatchRank model core: pure PyTorch (imports only torch and numpy).

The paper's method in one file (`method.py`: masked reconstruction, PatchGAN evidence, ranking), the
evidence terms added to it (`evidence/`), their composition into the one scoring function
(`scoring.py`), the networks, the training step, the settings (`config.py`) and the checkpoint.
"""

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    LoadedModel,
    build_networks,
    load_checkpoint,
    save_checkpoint,
    save_ensemble,
)
from .config import ScoringConfig, StepConfig
from .discriminator import PatchDiscriminator
from .losses import RankConfig
from .masks import BoxMaskGenerator, complementary_masks
from .ranking import rank_weights, ranked_sum
from .reconstructor import MaskedReconstructor
from .scoring import (
    Member,
    ScanScores,
    ScoreOutput,
    ScoreStats,
    fit_score_stats,
    score_images,
    score_members,
    score_scan,
    volume_score,
)
from .train_step import gan_step

__all__ = [
    "CHECKPOINT_FORMAT",
    "BoxMaskGenerator",
    "CheckpointError",
    "LoadedModel",
    "MaskedReconstructor",
    "Member",
    "PatchDiscriminator",
    "RankConfig",
    "ScanScores",
    "ScoreOutput",
    "ScoreStats",
    "ScoringConfig",
    "StepConfig",
    "build_networks",
    "complementary_masks",
    "fit_score_stats",
    "gan_step",
    "load_checkpoint",
    "rank_weights",
    "ranked_sum",
    "save_checkpoint",
    "save_ensemble",
    "score_images",
    "score_members",
    "score_scan",
    "volume_score",
]
