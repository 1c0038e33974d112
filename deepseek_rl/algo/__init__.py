"""The algorithm: advantages (advantages.py), log-probs (logprobs.py), the GRPO-family and fine-tuning losses
(losses.py), weighted rewards as tensors (reward_set.py), and the micro-batched policy update (update.py)."""
