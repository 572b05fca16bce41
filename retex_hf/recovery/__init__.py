"""Learning to recover: distil each expert into its offsets through `transformers.Trainer`."""

from .trainer import RecoveryTrainer, recover

__all__ = ["RecoveryTrainer", "recover"]
