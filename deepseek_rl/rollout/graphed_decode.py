"""The static decoder's step with fixed shapes, replayed from a CUDA graph (the built-in engine on a GPU).

Why: on a GPU the eager step is bound by launching its ~25 operations per layer from Python, not by the GPU. The
first GPU check measured 12 decode steps/s on an H200 for 64 rows of the 1.5B shape *and* for 32 rows of the 7B
shape (about 100 us per operation), where reading the weights takes under 1 ms per step. A CUDA graph launches the
whole step at once.

What capture needs, and what this decoder changes for it:
- every shape fixed for a rollout: attention reads the whole preallocated cache [rows, kv_heads, prompt + new
  tokens, head_dim] under a mask of the positions written so far, instead of the filled prefix;
- no position as a Python number: the new keys and values are written at a position held in a device tensor
  (index_copy_), and the write position and the rows' RoPE positions advance inside the graph;
- the graph holds the addresses of the cache and of the weights: it is captured at the first step of each rollout
  (after the prefill allocated that rollout's cache; the weights may have moved since the last rollout under FSDP2
  or ZeRO-3, which gather them per rollout) and again after rows are dropped. Dropping rows is then a recapture,
  so it waits until half of the held rows have ended (the eager decoder drops at an eighth);
- under autocast (bf16 mixed precision: fp32 master weights) the step is captured with autocast's weight cache off
  (a cached cast made during capture would belong to the graph's memory pool): each replay casts the weights again.

Where capture fails (an operation the graph cannot hold, e.g. in a custom projection) the decoder says so once and
runs the same fixed-shape step eagerly; `capture=False` runs it eagerly by design (tests on CPU compare it with the
eager decoder's logits). `rollout.cuda_graphs=false` keeps the eager decoder on a GPU too.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from deepseek_rl.rollout.kv_decode import StaticCache, StaticDecoder


class WriteAt:
    """A StaticCache seen by the layers of a fixed-shape step: the new position is written at `at` (a [1] long
    tensor on the device) and every layer reads its whole buffer (the mask hides what is not written yet)."""

    def __init__(self, cache: StaticCache, at: Tensor):
        self.cache, self.at = cache, at

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        keys, values = self.cache.keys[layer_idx], self.cache.values[layer_idx]  # [R, KV, L, D] views
        keys.index_copy_(2, self.at, key.to(keys.dtype))
        values.index_copy_(2, self.at, value.to(values.dtype))
        return keys, values


class GraphedDecoder(StaticDecoder):
    """StaticDecoder whose decode step has fixed shapes and is replayed from a CUDA graph (see the module)."""

    drop_when = 2  # drop the ended rows once 1 / drop_when of the held rows have ended (each drop recaptures)

    def __init__(self, model: nn.Module, capture: bool = True):
        super().__init__(model)
        self.capture = capture
        self.graph: torch.cuda.CUDAGraph | None = None

    @torch.no_grad()
    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, group_size: int, max_new_tokens: int) -> Tensor:
        logits = super().prefill(prompt_ids, prompt_mask, group_size, max_new_tokens)
        self._inputs()
        return logits

    def keep(self, rows: Tensor) -> None:
        super().keep(rows)
        self._inputs()

    def _inputs(self) -> None:
        """The step's fixed inputs for the rows held now; the graph is captured at the next step."""
        keys = self.cache.keys  # [layers, R, KV, L, D]
        self.token_in = torch.zeros(keys.shape[1], dtype=torch.long, device=keys.device)  # [R]
        self.write_at = torch.full((1,), self.cache.start, dtype=torch.long, device=keys.device)
        # self.next_position [R, 1] (the prefill's, or keep's copy of the rows kept) is advanced in place by the step
        self.span = torch.arange(keys.shape[3], device=keys.device)  # [L]
        self.graph, self.logits_out = None, None

    def _fixed_step(self) -> Tensor:
        """One decode step on the fixed inputs: token_in [R] -> logits [R, V]; advances write_at and the positions."""
        mask = (self.valid & (self.span <= self.write_at))[:, None, None, :]  # [R, 1, 1, L]
        logits = self._forward(self.token_in[:, None], self.next_position, mask, WriteAt(self.cache, self.write_at))
        self.write_at += 1
        self.next_position += 1
        return logits

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        self.token_in.copy_(tokens)
        if self.capture and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits_out
        else:
            logits = self._fixed_step()
        self.cache.start += 1
        return logits

    def _capture(self) -> None:
        """Capture the step after one eager warm-up run on the capture's side stream (lazy initialisations, such as
        a BLAS handle per stream, then happen outside the capture); the warm-up's writes are the step's own (same
        token, same position) and its counters are set back (capture records the step's kernels without running
        them, so the replay that follows advances them once)."""
        write_at, positions = self.write_at.clone(), self.next_position.clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), no_autocast_cache():
                self._fixed_step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side), no_autocast_cache():  # the warm-up's stream (its BLAS handle)
                self.logits_out = self._fixed_step()
            self.graph = graph
        except Exception as err:  # the fixed-shape step eagerly: slower, same tokens
            warnings.warn(f"the decode step could not be captured in a CUDA graph ({type(err).__name__}: {err}); "
                          "it runs eagerly (rollout.cuda_graphs=false silences this)", stacklevel=2)  # fmt: skip
            self.capture, self.graph, self.logits_out = False, None, None
        finally:
            self.write_at.copy_(write_at)
            self.next_position.copy_(positions)


def no_autocast_cache() -> torch.autocast:
    """The caller's autocast state (on or off, its dtype) with the weight cache off, for capture."""
    on = torch.is_autocast_enabled("cuda")
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=on, cache_enabled=False)
