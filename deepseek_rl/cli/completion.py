"""Shell completion for `deepseek-rl`: the commands, recipe names, and Hydra's completion of `train`'s keys.

    eval "$(deepseek-rl -sc install=bash)"     # in ~/.bashrc; zsh: `autoload -U bashcompinit && bashcompinit` first

Hydra's installed script answers a TAB by running `deepseek-rl -sc query=bash` with the command line in COMP_LINE,
and Hydra expects that line to start with the program and go on with overrides. Our program is `deepseek-rl train`,
so here the first word after `deepseek-rl` completes to a command; for `train`, the word after --config-name
completes to a recipe; otherwise the `train` word is dropped, --config-name / --config-dir are passed to Hydra
(so the keys offered are that recipe's) and Hydra answers: `algorithm.num_gen` -> `algorithm.num_generations=`,
`algorithm=` -> the presets. Other commands complete file names (the script's default).
"""

from __future__ import annotations

import os
import sys

COMMANDS = ("train", "eval", "score", "check", "sweeps", "--help", "--version")
NAME_FLAGS = ("--config-name", "-cn")
DIR_FLAGS = ("--config-dir", "-cd")


def split_config_args(words: list[str]) -> tuple[list[str], list[str]]:
    """(--config-name/--config-dir arguments for Hydra, the other words) of a command line's words."""
    hydra, kept, index = [], [], 0
    while index < len(words):
        word = words[index]
        if word in NAME_FLAGS + DIR_FLAGS and index + 1 < len(words):
            hydra += [word, words[index + 1]]
            index += 2
            continue
        if word.split("=", 1)[0] in NAME_FLAGS + DIR_FLAGS and "=" in word:
            hydra.append(word)
        else:
            kept.append(word)
        index += 1
    return hydra, kept


def answer(line: str) -> str | list[str]:
    """The candidates for COMP_LINE `line`, or the Hydra arguments (a list) to let Hydra answer."""
    from deepseek_rl.cli.recipes import recipe_files, search_dirs

    words, new_word = line.split(), line.endswith(" ") or not line
    current = "" if new_word else words[-1]
    done = words if new_word else words[:-1]  # the words before the one being completed
    if len(done) <= 1:
        return " ".join(c for c in COMMANDS if c.startswith(current))
    if done[1] != "train":
        return ""
    if done[-1] in NAME_FLAGS:
        config_dir = next((done[i + 1] for i in range(len(done) - 1) if done[i] in DIR_FLAGS), None)
        return " ".join(n for n in recipe_files(search_dirs(config_dir)) if n.startswith(current))
    hydra, kept = split_config_args(words[2:])
    os.environ["COMP_LINE"] = " ".join([words[0], *kept]) + (" " if new_word else "")
    return hydra


def main(argv: list[str]) -> None:
    """`deepseek-rl [train] -sc install=bash|query=bash|...`: answer, or hand over to Hydra's completion."""
    from deepseek_rl.cli.train import hydra_main

    flag = next(i for i, a in enumerate(argv) if a in ("-sc", "--shell-completion"))
    mode = argv[flag + 1] if flag + 1 < len(argv) else ""
    hydra: list[str] = []
    if mode.startswith("query="):
        found = answer(os.environ.get("COMP_LINE", ""))
        if isinstance(found, str):
            print(found)
            return
        hydra = found
    sys.argv = ["deepseek-rl", *hydra, "-sc", mode]  # Hydra's install script names the program after argv[0]
    hydra_main()
