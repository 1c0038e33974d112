"""Benchmarks and the reference run: they use the whole package; nothing in the core imports them."""
