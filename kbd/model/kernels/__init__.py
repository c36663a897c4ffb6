"""What kbd's Triton kernels (merge.py, gemv.py, products.py) share: Triton where it is installed,
where a kernel may run, and falling back to torch for good, said once, when one cannot compile."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

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


def usable(device: torch.device, failed: list[str]) -> bool:
    """Whether a kernel that has not failed here may run on this device."""
    return triton is not None and not failed and (device.type == "cuda" or INTERPRETED)


def launched(failed: list[str], kernel: str, launch: Callable[[], torch.Tensor],
             fallback: Callable[[], torch.Tensor]) -> torch.Tensor:
    """launch()'s result by the kernel, or fallback()'s by torch once the kernel has failed
    here (no compiler for this GPU, say): torch for good from its first failure, and why,
    said once. Checked here, not only by the caller, because compiled code keeps calling a
    kernel's operator after the failure."""
    if not failed:
        try:
            return launch()
        except Exception as e:
            failed.append(repr(e))
            log.warning("%s cannot run here, using torch: %s", kernel, e)
    return fallback()
