"""What kbd's Triton kernels (merge.py, gemv.py, swiglu.py) share: Triton where it is installed,
where a kernel may run, and falling back to torch for good, said once, when one cannot compile."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("kbd.model")

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: torch alone
    triton = tl = None

# the kernels on the CPU, through Triton's interpreter (the tests); read once, at import,
# because compiled code that calls a kernel cannot read the environment
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def usable(t: torch.Tensor, failed: list[str]) -> bool:
    """Whether a kernel that has not failed here may run on tensor t."""
    return triton is not None and not failed and (t.is_cuda or INTERPRETED)


def give_up(failed: list[str], kernel: str, error: Exception) -> None:
    """Torch from now on for this kernel (no compiler for this GPU, say), and why."""
    failed.append(repr(error))
    log.warning("%s cannot run here, using torch: %s", kernel, error)
