"""deepseek-rl: group-relative RL for reasoning language models."""

__version__ = "0.1.0"
