"""Where models, tokenizers and datasets come from: a local path, or a name on the Hugging Face Hub.

Choices:
- `model.path` (and `model.tokenizer`) is a local directory when one exists at that path; otherwise a name of the
  form `owner/name` is a Hub id that transformers resolves (downloading when online, else from the local HF cache).
  Anything else is an error that names the key. Checks read only `config.json` (`AutoConfig`), never weights.
- Offline (HF_HUB_OFFLINE=1, or no network) and not cached: a ConfigError naming the key and the two ways out
  (download it once online, or point the key at a local directory). Before the first Hub id is resolved, one TCP
  connect to the Hub's host (2 s at most) tells whether there is a network; without one the process goes offline
  (HF_HUB_OFFLINE), so a cached model loads at once and a missing one fails at once, instead of the Hub client
  retrying for half a minute.
- A config.json without `model_type` (or with one this transformers does not know): a ConfigError naming the key,
  read before any weights (`model.path`, `reward.models.NAME`).
- Datasets: `datasets.load_dataset(name, subset, split=...)`, only when a recipe sets `data.hub_name`; a local
  folder of data files works as a name too (splits from file names, e.g. train.jsonl / test.jsonl).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from deepseek_rl.errors import ConfigError
from deepseek_rl.paths import shared_dir

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def local_path(name: str) -> Path | None:
    """The local file or directory `name` points at (with ~ expanded), or None when there is none."""
    path = Path(os.path.expanduser(name))
    return path if path.exists() else None


def is_hub_id(name: str) -> bool:
    """`owner/name` that is not an existing local path: a Hugging Face Hub id.

    >>> is_hub_id("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"), is_hub_id("/tmp"), is_hub_id("runs/x/final/")
    (True, False, False)
    """
    return local_path(name) is None and HUB_ID_RE.match(name) is not None


def pretrained_source(name: str, key: str) -> str:
    """What to pass to `from_pretrained`: an existing local directory, or a Hub id; else a ConfigError for `key`."""
    path = local_path(name)
    if path is not None:
        if not path.is_dir():
            raise ConfigError(f"{key}={name}: a file, not a directory; give a model directory or a Hub id")
        return str(path)
    if is_hub_id(name):
        go_offline_if_unreachable()
        return name
    raise ConfigError(
        f"{key}={name}: not a directory (nothing is there), and not a Hugging Face Hub id (owner/name); "
        "give a local model directory or a Hub id such as deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" + shared_hint(name)
    )


def shared_hint(name: str) -> str:
    """For a path inside the shared folder (`${shared:...}` in recipes): where that folder was looked for and how to
    point at another one; '' for other paths."""
    shared = shared_dir()
    try:
        Path(name).resolve().relative_to(shared)
    except ValueError:
        return ""
    where = "DEEPSEEK_RL_SHARED" if "DEEPSEEK_RL_SHARED" in os.environ else "../shared beside the checkout, the default"
    return (f". The path is in the shared data folder {shared} ({where}): set DEEPSEEK_RL_SHARED to the folder that "
            "holds the shared tokenizers and data")  # fmt: skip


_REACHABLE: bool | None = None
_WENT_OFFLINE = False  # this process set HF_HUB_OFFLINE itself (the Hub did not answer)


def go_offline_if_unreachable(timeout: float = 2.0) -> bool:
    """Whether the Hub answers (one TCP connect to HF_ENDPOINT's host, once per process); when it does not, set
    HF_HUB_OFFLINE for this process (and huggingface_hub's constant, read at import) and say so once."""
    global _REACHABLE, _WENT_OFFLINE
    if _REACHABLE is not None:
        return _REACHABLE
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        _REACHABLE = False
        return False
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout).close()
        _REACHABLE = True
    except OSError:
        _REACHABLE, _WENT_OFFLINE = False, True
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import huggingface_hub.constants

            huggingface_hub.constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    return _REACHABLE


def offline_hint(name: str, key: str, err: Exception) -> ConfigError:
    """The error for a Hub id that could not be resolved (offline, not cached, misspelled or gated)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline and _WENT_OFFLINE:
        why = "the Hub is not reachable from here and it is not in the local cache"
    elif offline:
        why = "HF_HUB_OFFLINE is set and it is not in the local cache"
    else:
        why = f"{type(err).__name__}: {err}"
    return ConfigError(
        f"{key}={name}: not a local directory, and the Hugging Face Hub could not provide it ({why}). "
        f"Download it once while online (`hf download {name}`), or set {key} to a local directory"
    )


def load_model_config(name: str, key: str = "model.path") -> Any:
    """The architecture config (`config.json`) of a local model directory or a Hub id, without weights."""
    from transformers import AutoConfig

    source = pretrained_source(name, key)
    if local_path(name) is not None and not (Path(source) / "config.json").exists():
        raise ConfigError(f"{key}={name}: no config.json there; give a Hugging Face model directory or a Hub id")
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as err:
        if local_path(name) is not None:
            raise ConfigError(f"{key}={name}: config.json could not be read ({err})") from err
        raise offline_hint(name, key, err) from err
    except (ValueError, KeyError) as err:  # no model_type, or one this transformers does not know
        raise architecture_error(name, key, Path(source) / "config.json", err) from None


def architecture_error(name: str, key: str, config_file: Path, err: Exception) -> ConfigError:
    """The error for a config.json whose architecture transformers cannot tell: no `model_type`, or an unknown one."""
    import json

    why = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:200]
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):  # a Hub id (the file is in the cache), or not a JSON object
        return ConfigError(f"{key}={name}: transformers cannot load its config ({why}); upgrade transformers, or give "
                           "a model of a supported architecture")  # fmt: skip
    if model_type is None:
        return ConfigError(
            f"{key}={name}: its config.json has no `model_type`, so transformers cannot tell the architecture; "
            'save the model with save_pretrained, or add "model_type" (e.g. "llama", "qwen2") to config.json'
        )
    return ConfigError(
        f"{key}={name}: transformers does not know its model_type '{model_type}' ({why}); upgrade transformers, "
        "or give a model of a supported architecture"
    )


def load_pretrained(loader: Any, name: str, key: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source, **kwargs)` (AutoTokenizer, AutoModelForCausalLM) with the errors above."""
    source = pretrained_source(name, key)
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:
        if local_path(name) is not None:
            raise
        raise offline_hint(name, key, err) from err


def load_hub_split(name: str, subset: str | None, split: str) -> Any:
    """One split of a Hub dataset (or a local dataset folder) as a `datasets.Dataset`."""
    import datasets

    try:
        return datasets.load_dataset(name, subset, split=split)
    except (OSError, ValueError, ConnectionError) as err:
        raise ConfigError(
            f"data.hub_name={name} (data.hub_subset={subset}, split '{split}') could not be loaded "
            f"({type(err).__name__}: {err}). Offline, download it once while online or use a local file with "
            "data.path / data.eval_path"
        ) from err
