"""This machine's speed, printed beside wall times so that a user on another CPU can scale them."""

from __future__ import annotations

import time

import torch


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """fp32 matrix-multiply throughput with torch's current thread count (the best of `repeats`), in GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def machine_line(seconds: float) -> str:
    """'done in 212 s (2 torch threads; fp32 matmul 95 GFLOP/s)': the figure a user compares with the README's."""
    gflops = matmul_gflops(1024, 5)
    threads = torch.get_num_threads()
    return f"done in {seconds:.0f} s ({threads} torch thread{'s' * (threads > 1)}; fp32 matmul {gflops:.0f} GFLOP/s)"
