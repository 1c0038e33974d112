"""`deepseek-rl serve`: the rollout worker of asynchronous GRPO (stages/rollout_worker.py), on its own devices.

    deepseek-rl serve --config-name RECIPE [--config-dir DIR] [--host 0.0.0.0] [--port 29600] [key=value ...]
    then: deepseek-rl train --config-name RECIPE rollout.server.url=HOST:29600   (or accelerate launch ...)

It serves one trainer, whose config must sample what its own does (the same recipe and keys; where the trainer
writes and logs may differ), from the trainer's first step (or its resumed one) to the last. `--config-json` is how
a trainer starts one beside itself (then it dies with its trainer). Errors: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A worker started beside its trainer is killed by the kernel when the trainer dies (even by SIGKILL)."""
    parent = os.environ.get("DEEPSEEK_RL_PARENT_PID")
    if parent is None:
        return
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != int(parent):  # the trainer died before the signal was armed
        sys.exit(0)


def flat_items(data: dict, prefix: str = ""):
    """(dotted key, value) of every node of a nested dict, parents before children."""
    for key, value in data.items():
        yield prefix + key, value
        if isinstance(value, dict):
            yield from flat_items(value, f"{prefix}{key}.")


def load_config(args: argparse.Namespace, overrides: list[str]):
    from omegaconf import OmegaConf

    from deepseek_rl.config import load_recipe
    from deepseek_rl.config.schema import Config

    if args.config_json:  # the trainer's own config, as it ran: a dict field replaces the default's, not merges
        from deepseek_rl.config.overrides import key_kind

        data = json.loads(open(args.config_json).read())
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data))
        for key, value in flat_items(data):
            if key_kind(key) == "dict":
                OmegaConf.update(cfg, key, value, merge=False)
        return OmegaConf.to_object(cfg)
    return load_recipe(args.config_name, overrides, args.config_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deepseek-rl serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-name", "-cn", default="default")
    parser.add_argument("--config-dir", "-cd")
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="0.0.0.0", help="the address to listen on (default: every interface)")
    parser.add_argument("--port", type=int, default=29600)
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    die_with_parent()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from deepseek_rl.errors import UserError
    from deepseek_rl.stages.rollout_worker import serve

    try:
        serve(load_config(args, overrides), args.host, args.port)
    except UserError as err:
        print(f"deepseek-rl serve: {err.kind}: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
    except KeyboardInterrupt:
        print("deepseek-rl serve: interrupted", file=sys.stderr)
        sys.exit(130)
