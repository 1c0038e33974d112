"""The stages of the R1 pipeline, each setup -> steps -> finish over the shared infrastructure: cold-start SFT
(sft.py) and rejection-sampling fine-tuning (rft.py) on finetune.py, GRPO (grpo.py, with its rollout phase in
collect.py and its metrics in metrics.py, observability.py, alarms.py), evaluation (evaluate.py), and the pipeline
that runs them in order (pipeline.py)."""
