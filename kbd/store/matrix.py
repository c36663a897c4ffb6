"""Memory vectors on disk: one append-only matrix file per model fingerprint.

Each compressed passage is one fixed-size row of raw bytes ([n_mem, hidden] in the model's
dtype). The database maps (text hash, fingerprint) to a row; ranking reads the whole file as
one memory-mapped matrix instead of 100k database rows. A row is written and fsynced before its
database row commits, so a crash leaves at worst an unreferenced row at the end of the file.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np

from kbd.errors import MemoryFileError
from kbd.private import private_fd, write_private


class MemoryMatrix:
    def __init__(self, folder: Path, fingerprint: str, shape: tuple[int, int], dtype: str):
        self.path = folder / f"{fingerprint}.bin"
        self.shape = shape  # (n_mem, hidden) of one row
        self.dtype = dtype
        self.row_bytes = shape[0] * shape[1] * np.dtype(_numpy_dtype(dtype)).itemsize
        meta_path = folder / f"{fingerprint}.json"
        meta = {"shape": list(shape), "dtype": dtype}
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != meta:
                raise MemoryFileError(f"{meta_path}: holds {found}, the model gives {meta}")
        else:
            write_private(meta_path, json.dumps(meta))

    def rows(self) -> int:
        return self.path.stat().st_size // self.row_bytes if self.path.exists() else 0

    def append(self, blobs: list[bytes]) -> list[int]:
        """Write rows at the end and fsync; returns their row numbers."""
        for blob in blobs:
            if len(blob) != self.row_bytes:
                raise MemoryFileError(f"{self.path}: a row is {self.row_bytes} bytes, got "
                                      f"{len(blob)}")
        try:
            with os.fdopen(private_fd(self.path, os.O_WRONLY | os.O_APPEND), "ab") as f:
                end = f.seek(0, os.SEEK_END)
                if end % self.row_bytes:  # a crash or a full disk cut the last row short
                    f.truncate(end - end % self.row_bytes)
                    end -= end % self.row_bytes
                f.write(b"".join(blobs))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # rows written before the error stay unmapped: harmless
            full = e.errno == errno.ENOSPC
            raise MemoryFileError(
                f"{'disk full writing' if full else 'cannot write'} {self.path} ({e.strerror})",
                hint=f"{'free space on its disk' if full else 'make it writable'}; kbd retries "
                     "by itself", code="disk-full" if full else "memory-file") from e
        first = end // self.row_bytes
        return list(range(first, first + len(blobs)))

    def matrix(self) -> np.ndarray:
        """All rows as a read-only memory map: [rows, n_mem, hidden] (bf16 as uint16)."""
        n = self.rows()
        if n == 0:
            return np.empty((0, *self.shape), dtype=_numpy_dtype(self.dtype))
        return np.memmap(self.path, dtype=_numpy_dtype(self.dtype), mode="r",
                         shape=(n, *self.shape))

    def read(self, rows: list[int]) -> list[bytes]:
        m = self.matrix()
        return [m[r].tobytes() for r in rows]


def _numpy_dtype(dtype: str) -> str:
    # numpy has no bfloat16: its raw 16 bits travel as uint16
    return {"bfloat16": "uint16", "float16": "float16", "float32": "float32"}[dtype]
