"""rlhfkit: the whole RLHF pipeline: SFT, preferences, reward model, PPO, DPO, Constitutional AI."""

__version__ = "0.1.0"
