"""Timing helpers shared by the GPU lever scripts."""

from __future__ import annotations

import itertools
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
    spans = []  # (start, end, name) of each kernel, microseconds
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        count += 1
        spans.append((event.time_range.start, event.time_range.end, event.name[:60]))
        ms = event.device_time / 1000 / calls
        name = event.name.lower()
        kind = next((k for k, keys in KINDS if any(key in name for key in keys)), "other")
        by_kind[kind] += ms
        by_name[event.name[:120]] += ms
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
    return {"total_ms": sum(by_kind.values()), "wall_ms": wall * 1000 / calls,
            "kernels_per_call": count / calls, "by_kind_ms": dict(by_kind),
            "top_kernels_ms": dict(top), "idle": idle(sorted(spans), wall * 1e6, calls)}


def idle(spans: list[tuple[float, float, str]], wall_us: float, calls: int) -> dict:
    """Where the GPU waited, per call: between its first and last kernel (the five longest
    waits, after which kernel), and outside them (the host before its first launch and
    after the last kernel, up to the synchronisation)."""
    waits = [(b[0] - a[1], a[2]) for a, b in itertools.pairwise(spans)]
    longest = sorted(waits, reverse=True)[:5]
    span_us = spans[-1][1] - spans[0][0]
    return {"between_kernels_ms": sum(max(0.0, w) for w, _ in waits) / 1000 / calls,
            "outside_kernels_ms": (wall_us - span_us) / 1000 / calls,
            "longest_waits_ms": [(round(w / 1000, 3), name) for w, name in longest]}
