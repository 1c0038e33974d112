"""Data: where rows come from (sources.py, tasks/, transforms.py), prompts for rollouts (prompts.py), and
(prompt, completion) examples for fine-tuning (examples.py)."""
