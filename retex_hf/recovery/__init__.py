"""Learning to recover: distil each expert into its offsets through `transformers.Trainer`."""

from .targets import teacher_examples
from .trainer import RecoveryTrainer, recover

__all__ = ["RecoveryTrainer", "recover", "teacher_examples"]
