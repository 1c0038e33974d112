"""Infrastructure every stage shares: the accelerator and distributed helpers (distributed.py), checkpoints and the
HF export (checkpoint.py), the optimizer and LR schedule (optim.py), preemption (preemption.py), tracking
(tracking.py, the only wandb import), sweeps (sweep.py) and plots (plots.py)."""
