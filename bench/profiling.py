"""Timing helpers shared by the GPU lever scripts."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

KINDS = (("gemm", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")),
         ("attention", ("flash", "fmha", "sdpa")),
         ("fused (triton)", ("triton",)))


def timed(fn, repeat: int) -> float:
    """Median wall seconds of fn() after one warm-up call, the GPU waited for."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def back_to_back(fn, n: int) -> float:
    """Mean wall seconds of n calls of fn queued back to back, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def kernel_profile(fn, calls: int = 1) -> dict:
    """GPU milliseconds per call of fn (over `calls` calls, after one more), by kind of kernel,
    the fifteen longest kernels, and the wall milliseconds per call under the profiler."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    count = 0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        count += 1
        ms = event.device_time / 1000 / calls
        name = event.name.lower()
        kind = next((k for k, keys in KINDS if any(key in name for key in keys)), "other")
        by_kind[kind] += ms
        by_name[event.name[:120]] += ms
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
    return {"total_ms": sum(by_kind.values()), "wall_ms": wall * 1000 / calls,
            "kernels_per_call": count / calls, "by_kind_ms": dict(by_kind),
            "top_kernels_ms": dict(top)}
