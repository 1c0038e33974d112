"""Rollouts: the engine interface and the built-in engine (engine.py), its KV-cached sampler (sampler.py,
kv_decode.py)."""
