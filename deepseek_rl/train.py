"""`python -m deepseek_rl.train` / `accelerate launch -m deepseek_rl.train`: the training entry point, kept at this
path for users' launch scripts. The command itself lives in deepseek_rl/cli/train.py."""

from deepseek_rl.cli.wheels import exit_if_broken

exit_if_broken()  # before transformers is imported (cli/wheels.py)

from deepseek_rl.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main()
