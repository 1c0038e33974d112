"""The reward group's config: which rewards (built-in, your own functions, reward models) with what weights and
arguments, where they are scored (reward workers, their timeout), what a failed score counts, when failures stop
the run, and how code rewards isolate the code they run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from deepseek_rl.config.checks import one_of, require


@dataclass
class RewardConfig:
    # Reward name -> weight in the total reward. Names come from the reward table (deepseek_rl.rewards.REWARDS),
    # from `functions` and `models` below, or are "module:function" import paths. null: {answer_match: 1.0}.
    # On the command line `reward.weights={a: 1.0, b: 0.2}` replaces the recipe's weights; +reward.weights.c=0.5 adds.
    weights: dict[str, float] | None = None
    # Your own reward functions `f(completions, **columns)`, name -> "file.py:function" (relative to the working
    # directory) or "package.module:function", e.g. +reward.functions.brevity=my_rewards.py:brevity. They run in the
    # reward workers; a name without a weight in `weights` gets 1.0.
    functions: dict[str, str] = field(default_factory=dict)
    # Reward models: name -> a Hugging Face sequence-classification model (local directory or Hub id) whose first
    # logit on prompt + completion is the score, computed on the trainer's device (as TRL does); weight as above.
    models: dict[str, str] = field(default_factory=dict)
    # Completions a reward model scores per forward pass.
    model_batch_size: int = 16
    # Extra keyword arguments per reward name, e.g. {soft_overlong: {buffer_length: 32}}.
    args: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Worker processes that score the non-text rewards (math, code, your own), one sample per task.
    # null: the cores of this machine shared among its ranks; 0: score in the trainer process, without timeouts.
    num_workers: int | None = None
    # Seconds one reward may spend on one sample in a worker; then the worker is killed and replaced.
    # A reward with a `timeout` argument of its own (code, binary_code) gets at least that plus 2 s.
    timeout: float = 10.0
    # Score of a sample whose reward timed out or raised (counted in reward/<name>/timeouts and /errors):
    # 0.0, or null for "cannot be scored" (then it counts 0 in the total and is left out of the reward's mean).
    on_failure: float | None = 0.0
    # A reward that fails (raises, times out, returns inf or a score beyond float32) on more than this share of a
    # step's samples prints an alarm; after max_error_steps such steps in a row the run stops (exit 2), since it
    # would train on failure scores. 1.0: never stop.
    max_error_rate: float = 0.5
    max_error_steps: int = 3
    # Isolation of the untrusted code that code rewards run (sandbox/sandbox.py): strong (namespaces, as root or
    # through unprivileged user namespaces; an error where neither works) | weak (resource limits only: the code
    # can read this user's files and reach the network) | auto (strong where possible, else stop and ask for weak).
    sandbox: str = "auto"

    def __post_init__(self) -> None:
        from deepseek_rl.rewards import check_reward_args, resolve_reward

        one_of("reward.sandbox", self.sandbox, ("strong", "weak", "auto"))

        if self.weights is None:
            self.weights = {"answer_match": 1.0}
        self.check_own_rewards()
        require(
            len(self.weights) > 0,
            "reward.weights is empty: give at least one reward, e.g. reward.weights={answer_match: 1.0}",
        )
        for name in self.weights:
            if name not in self.models:
                resolve_reward(name, self.functions)  # raises ConfigError naming the reward (or its file)
        for name in self.args:
            require(name in self.weights, f"reward.args.{name} is set but '{name}' is not in reward.weights")
            require(name not in self.models, f"reward.args.{name}: a reward model takes no arguments")
            check_reward_args(name, resolve_reward(name, self.functions), self.args[name])
        require(self.model_batch_size >= 1, f"reward.model_batch_size={self.model_batch_size} must be >= 1")
        require(
            self.num_workers is None or self.num_workers >= 0,
            f"reward.num_workers={self.num_workers} must be >= 0 (0: in the trainer process; null: one per core)",
        )
        require(self.timeout > 0, f"reward.timeout={self.timeout} must be > 0 seconds")
        require(0 <= self.max_error_rate <= 1, f"reward.max_error_rate={self.max_error_rate} must be in [0, 1]")
        require(self.max_error_steps >= 1, f"reward.max_error_steps={self.max_error_steps} must be >= 1")

    def subset(self, names: list[str]) -> RewardConfig:
        """The rewards `names`, weight 1.0 each, with this config's arguments, functions, models and worker settings
        (evaluation's verifier, RFT's verifiers judge as training does)."""
        return replace(
            self,
            weights=dict.fromkeys(names, 1.0),
            functions={n: f for n, f in self.functions.items() if n in names},
            models={n: m for n, m in self.models.items() if n in names},
            args={n: dict(a) for n, a in self.args.items() if n in names},
        )

    def check_own_rewards(self) -> None:
        """reward.functions and reward.models: names that are not the table's, files made absolute (the reward
        workers import them by path), model directories that exist; each gets weight 1.0 unless weighted."""
        from deepseek_rl.rewards import REWARDS
        from deepseek_rl.rewards.loading import absolute_spec

        assert self.weights is not None
        for key, table in (("functions", self.functions), ("models", self.models)):
            for name in table:
                require(
                    name not in REWARDS,
                    f"reward.{key}.{name}: '{name}' is the name of a built-in reward; give yours another name",
                )
                require(
                    key == "functions" or name not in self.functions,
                    f"reward.models.{name}: '{name}' is also in reward.functions; give each its own name",
                )
                self.weights.setdefault(name, 1.0)
        self.functions = {name: absolute_spec(spec) for name, spec in self.functions.items()}
        for name, path in self.models.items():
            from deepseek_rl.hub import load_model_config

            load_model_config(path, f"reward.models.{name}")  # config.json only: a clear error before any weights
