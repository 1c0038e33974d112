"""A static-KV-cache decoder for Llama-family models (Llama, Qwen2, Qwen3), on the model's own weights.

Why: Hugging Face's generic path grows its cache by concatenation every token (a copy of the whole cache per
step), rebuilds attention masks on each call, and goes through a dozen module calls per layer. Here the cache is
preallocated once for prompt + completion length, each step writes one position in place, the boolean attention
mask is a slice of one precomputed tensor, and each layer is a short sequence of functional ops (RMSNorm, the
projections, rotary embedding, SDPA, SwiGLU) reading the model's parameters, so tiny models are not bound by
Python overhead. The rotary embedding is the model's own module (any RoPE scaling), projections that are not plain
`nn.Linear` (LoRA adapters) are called as modules, and tests compare the logits with the plain forward.

Prompts are prefilled once per unique prompt and the cache is then repeated for the G completions of each group,
instead of prefilling the same prompt G times. `keep(rows)` drops the rows that have ended from the cache, so a
long-tailed batch does not pay for its finished rows until its longest one ends. Models outside the supported
family (or with sliding windows) use `DynamicDecoder`: the model's own forward with Hugging Face's growing cache,
behind the same calls.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED = {"llama", "qwen2", "qwen3"}


def base_model(model: nn.Module) -> nn.Module:
    """The causal LM under a PEFT wrapper (its LoRA layers stay in place inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_static_decode(model: nn.Module) -> bool:
    """Llama-family decoder layers (the model's own), full attention (no sliding window in use)."""
    model = base_model(model)
    config, inner = getattr(model, "config", None), getattr(model, "model", None)
    return (
        config is not None
        and config.model_type in SUPPORTED
        and not getattr(config, "use_sliding_window", False)
        and all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))
    )


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype the projections compute in: autocast's where it is on (bf16 mixed precision: the keys and values
    are bf16, and a cache of the fp32 master weights' dtype would hold them in twice the memory), else the weight's."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class StaticCache:
    """Keys and values of every layer in preallocated buffers [layers, rows, kv_heads, max_len, head_dim].

    The attention modules call `update(key, value, layer_idx)` with the new positions' keys and values; they are
    written at `start` and the filled prefix is returned."""

    def __init__(self, layers: int, rows: int, kv_heads: int, max_len: int, head_dim: int, like: Tensor):
        shape = (layers, rows, kv_heads, max_len, head_dim)
        dtype = compute_dtype(like)
        self.keys = torch.zeros(shape, dtype=dtype, device=like.device)
        self.values = torch.zeros(shape, dtype=dtype, device=like.device)
        self.start = 0  # where the current call writes

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        end = self.start + key.shape[2]
        self.keys[layer_idx, :, :, self.start : end] = key
        self.values[layer_idx, :, :, self.start : end] = value
        return self.keys[layer_idx, :, :, :end], self.values[layer_idx, :, :, :end]


def _projection(module: nn.Module):
    """A plain Linear as F.linear on its parameters (no module-call overhead); anything else (LoRA, a quantized
    Linear with a forward of its own) as a module. A Linear that FSDP2 sharded (class FSDPLinear, nn.Linear's own
    forward) counts as plain: calling it would run FSDP's hooks, which must not run inside a rollout."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    return module


def _head(module: nn.Module):
    """The LM head. On CPU a plain Linear is applied as x @ W^T with W^T stored contiguous (one copy per rollout):
    at the few rows of a decode step MKL reads a [vocab, hidden] weight through its transpose-B path at a third of
    the memory bandwidth of the plain layout (measured: 151,936 x 256, 1 row, 2 threads: 20 ms vs 7 ms), and the
    head is most of a decode step for a small model with a 150k vocabulary."""
    plain = isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
    if not plain or module.weight.device.type != "cpu":
        return _projection(module)
    weight_t, bias = module.weight.detach().t().contiguous(), module.bias
    return (lambda x: torch.addmm(bias, x, weight_t)) if bias is not None else (lambda x: x @ weight_t)


def _rms_norm(module: nn.Module):
    weight, eps = module.weight, module.variance_epsilon
    return lambda x: F.rms_norm(x, (x.shape[-1],), weight, eps)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding in the "rotate half" layout of Llama-family models. x [R, H, T, D], cos/sin [R, 1, T, D]."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _Layer:
    """One decoder layer's parameters, ready for the functional forward."""

    def __init__(self, layer: nn.Module, head_dim: int):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2 = _rms_norm(layer.input_layernorm), _rms_norm(layer.post_attention_layernorm)
        self.q, self.k, self.v, self.o = (_projection(getattr(attn, f"{n}_proj")) for n in "qkvo")
        self.q_norm = _rms_norm(attn.q_norm) if hasattr(attn, "q_norm") else None  # Qwen3
        self.k_norm = _rms_norm(attn.k_norm) if hasattr(attn, "k_norm") else None
        self.gate, self.up, self.down = _projection(mlp.gate_proj), _projection(mlp.up_proj), _projection(mlp.down_proj)
        self.act = mlp.act_fn
        self.head_dim, self.scaling = head_dim, attn.scaling
        self.gqa = attn.num_key_value_groups > 1

    def __call__(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache: StaticCache, index: int) -> Tensor:
        r, t, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(r, t, -1, self.head_dim)
        k = self.k(h).view(r, t, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = _rotate(q.transpose(1, 2), cos, sin), _rotate(k.transpose(1, 2), cos, sin)
        keys, values = cache.update(k, self.v(h).view(r, t, -1, self.head_dim).transpose(1, 2), index)
        if t == 1 and self.gqa:  # a decode step: the query heads of a KV head as its query positions, so the keys
            # and values are read once per KV head, not copied out per query head (the math kernel's GQA does that)
            grouped = q.reshape(r, keys.shape[1], -1, self.head_dim)  # [R, KV, H / KV, D]
            o = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=self.scaling)
            o = o.reshape(r, -1, 1, self.head_dim)  # [R, H, 1, D]
        else:
            o = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=self.gqa
            )
        x = x + self.o(o.transpose(1, 2).reshape(r, t, -1))
        h = self.norm2(x)
        return x + self.down(self.act(self.gate(h)) * self.up(h))


class StaticDecoder:
    """Prefill B prompts, then decode their B * G continuations one token at a time."""

    drop_when = 8  # the sampler drops the ended rows once 1 / drop_when of the held rows have ended

    def __init__(self, model: nn.Module):
        self.model = base_model(model)
        self.inner = self.model.model
        config = self.model.config
        self.layers = config.num_hidden_layers
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.blocks = [_Layer(layer, self.head_dim) for layer in self.inner.layers]
        self.final_norm = _rms_norm(self.inner.norm)
        self.lm_head = _head(self.model.lm_head)

    def _forward(self, ids: Tensor, positions: Tensor, mask: Tensor, cache: StaticCache) -> Tensor:
        """ids, positions [R, T]; mask [R, 1, T, S] bool (True: attend) -> logits of the last position [R, V]."""
        hidden = self.inner.embed_tokens(ids)
        cos, sin = (t.unsqueeze(1) for t in self.inner.rotary_emb(hidden, positions))  # [R, 1, T, D]
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, cos, sin, mask, cache, index)
        return self.lm_head(self.final_norm(hidden[:, -1]))

    @torch.no_grad()
    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, group_size: int, max_new_tokens: int) -> Tensor:
        """prompt_ids, prompt_mask [B, P] (left-padded) -> logits of the first new token [B * G, V]."""
        b, p = prompt_ids.shape
        positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
        valid = prompt_mask.bool()
        causal = torch.ones(p, p, dtype=torch.bool, device=prompt_ids.device).tril()
        mask = causal[None, None] & valid[:, None, None, :]  # [B, 1, P, P]
        mask |= torch.eye(p, dtype=torch.bool, device=prompt_ids.device)  # padding rows attend to themselves (no NaN)
        small = StaticCache(self.layers, b, self.kv_heads, p, self.head_dim, self.inner.embed_tokens.weight)
        logits = self._forward(prompt_ids, positions, mask, small)
        rows = b * group_size
        self.cache = StaticCache(
            self.layers, rows, self.kv_heads, p + max_new_tokens, self.head_dim, self.inner.embed_tokens.weight
        )
        self.cache.keys[:, :, :, :p] = small.keys.repeat_interleave(group_size, dim=1)
        self.cache.values[:, :, :, :p] = small.values.repeat_interleave(group_size, dim=1)
        self.cache.start = p
        self.valid = torch.ones(rows, p + max_new_tokens, dtype=torch.bool, device=prompt_ids.device)
        self.valid[:, :p] = valid.repeat_interleave(group_size, dim=0)
        self.next_position = positions[:, -1:].repeat_interleave(group_size, dim=0) + 1  # [B * G, 1]
        return logits.repeat_interleave(group_size, dim=0)

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """The next token of every row [B * G] -> logits of the token after it [B * G, V]."""
        end = self.cache.start + 1
        mask = self.valid[:, None, None, :end]
        logits = self._forward(tokens[:, None], self.next_position, mask, self.cache)
        self.cache.start = end
        self.next_position = self.next_position + 1
        return logits

    def keep(self, rows: Tensor) -> None:
        """Go on with these rows only (indices into the current rows, ascending): the cache is copied down to them."""
        self.cache.keys, self.cache.values = self.cache.keys[:, rows], self.cache.values[:, rows]
        self.valid, self.next_position = self.valid[rows], self.next_position[rows]


class DynamicDecoder:
    """The generic path for any causal LM: its own forward with a Hugging Face DynamicCache."""

    drop_when = 8

    def __init__(self, model: nn.Module):
        self.model = model
        # the forward's cache argument: `cache` since transformers 5.20, `past_key_values` before (5.16-5.19, the
        # versions vLLM accepts)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, group_size: int, max_new_tokens: int) -> Tensor:
        from transformers import DynamicCache

        ids = prompt_ids.repeat_interleave(group_size, dim=0)  # [B * G, P]
        self.attention_mask = prompt_mask.repeat_interleave(group_size, dim=0)
        positions = (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=self.model.config)
        mask = self.attention_mask
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **{self.cache_arg: self.cache}
        )
        self.next_position = positions[:, -1:] + 1
        return out.logits[:, -1]

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        mask = self.attention_mask = torch.cat(
            [self.attention_mask, torch.ones_like(self.attention_mask[:, :1])], dim=1
        )
        positions, cache = self.next_position, {self.cache_arg: self.cache}
        out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, **cache)
        self.next_position = self.next_position + 1
        return out.logits[:, -1]

    def keep(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.attention_mask, self.next_position = self.attention_mask[rows], self.next_position[rows]
