"""`deepseek-rl check`: compose and validate a recipe, then run the preflight check without loading weights.

    deepseek-rl check --config-name math_dapo_r1_distill --launch-config launch/zero3.yaml --mixed-precision bf16 \\
        --device-memory-gb 80
    deepseek-rl check --config-name gsm8k_grpo_r1_distill --num-processes 4 rollout.max_completion_length=2048

The launch comes from --launch-config (an accelerate config file; --num-processes and --mixed-precision override it
as they do for `accelerate launch`), else from the environment `accelerate launch` sets, else one process. The
device memory comes from --device-memory-gb, else the GPU (if any); without either, memory is reported, not judged.
Exit status: 0 when everything fits, 1 when a problem was found, 2 when the recipe itself does not compose.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="deepseek-rl check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-name", "-cn", default="default", help="a recipe in recipes/")
    parser.add_argument("--config-dir", "-cd", help="your own recipes, searched before ours (as train's)")
    parser.add_argument("--launch-config", help="an accelerate config file, e.g. launch/zero3.yaml")
    parser.add_argument("--num-processes", type=int, help="processes in all (overrides the launch config)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], help="as accelerate launch takes it")
    parser.add_argument("--device-memory-gb", type=float, help="memory of one device in GB (1e9 bytes)")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, overrides


def main(argv: list[str] | None = None) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from deepseek_rl.config import ConfigError, load_recipe
    from deepseek_rl.preflight.check import check, detected_device_memory, launch_from_env, launch_from_file
    from deepseek_rl.preflight.memory import GB

    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_recipe(args.config_name, overrides, args.config_dir)
        if args.launch_config:
            launch = launch_from_file(args.launch_config, args.num_processes, args.mixed_precision)
        else:
            env = launch_from_env()
            world = args.num_processes or env.world_size
            launch = replace(env, world_size=world, mixed_precision=args.mixed_precision or env.mixed_precision)
            if launch.backend == "single" and world > 1:
                launch = replace(launch, backend="ddp", source="--num-processes")
        memory = args.device_memory_gb * GB if args.device_memory_gb else detected_device_memory()
        report = check(cfg, launch, memory, args.config_name, config_dir=args.config_dir, given=overrides)
    except (ConfigError, HydraException, OmegaConfBaseException, OSError) as err:
        print(f"deepseek-rl check: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    print(report.text())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
