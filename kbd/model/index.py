"""Stored memory held on the model's device, loaded once and extended as rows arrive.

Rows of a model's matrix file never change once written, so the index only ever appends the
rows it has not seen yet; which rows are candidates for a question is decided outside (the
store knows which passages are live and where they come from).
"""

from __future__ import annotations

import numpy as np
import torch

from kbd.store.memory import MemoryMatrix

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class MemoryIndex:
    def __init__(self, matrix: MemoryMatrix, device: torch.device):
        self.matrix = matrix
        self.device = device
        self.dtype = DTYPES[matrix.dtype]
        self._memory = torch.empty(0, *matrix.shape, dtype=self.dtype, device=device)
        self.rows = 0

    def refresh(self) -> int:
        """Load rows appended since the last refresh; returns how many."""
        total = self.matrix.rows()
        if total <= self.rows:
            return 0
        new = np.array(self.matrix.matrix()[self.rows:total])  # a writable copy off the map
        block = torch.from_numpy(new)
        if self.dtype == torch.bfloat16:
            block = block.view(torch.bfloat16)
        capacity = self._memory.shape[0]
        if total > capacity:  # grow geometrically: appends stay amortised O(1)
            grown = torch.empty(max(total, 2 * capacity, 1024), *self.matrix.shape,
                                dtype=self.dtype, device=self.device)
            grown[:self.rows] = self._memory[:self.rows]
            self._memory = grown
        self._memory[self.rows:total] = block.to(self.device)
        added, self.rows = total - self.rows, total
        return added

    @property
    def memory(self) -> torch.Tensor:
        """[rows, n_mem, hidden] on the device (a view, no copy)."""
        return self._memory[:self.rows]
