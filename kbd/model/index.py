"""Stored memory, searchable on the model's device: a 4-bit copy ranks, the exact rows decide.

Ranking 100,000 passages against one question reads every stored vector. Held in bf16 that is
12 GiB beside a 14 GiB model; here each row is kept as 4-bit codes (a quarter of that) after a
fixed random rotation that spreads the few large channels of a hidden state over all of them,
so one scale per row loses little. The codes pick the best RESCORE candidates; those are read
back exactly from the model's matrix file (memory-mapped, so the page cache serves them) and
ranked again in float32, and it is the exact rows that the decoder reads.

Rows of a matrix file never change once written, so the index only appends the rows it has not
seen; which rows are candidates for a question is decided outside (the store knows which
passages are live). Blocks go to the GPU while it has room beside the model's working memory
(HEADROOM_BYTES); past that they stay in host memory, page-locked, and are streamed in for
each question: slower, never refused.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from kbd.errors import InputError

log = logging.getLogger("kbd.model")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
RESCORE = 64  # candidates ranked exactly per question (at least 4 x top-k)
BLOCK_ROWS = 32768  # rows per block: 1 GiB of codes at Mistral-7B's shape
FIRST_ROWS = 1024  # a block's first allocation: 32 MiB at that shape, for a small store
CHUNK_BYTES = 64 * 1024**2  # codes unpacked at once while ranking
HEADROOM_BYTES = 3 * 1024**3  # GPU memory left free for compression and decoding


def rotation(width: int, device: torch.device) -> torch.Tensor:
    """A fixed random orthogonal [width, width] matrix (float32)."""
    gen = torch.Generator().manual_seed(0)
    q, r = torch.linalg.qr(torch.randn(width, width, generator=gen))
    return (q * torch.sign(torch.diagonal(r))).to(device)


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [n, k] int8 @ b [k, c] int8 -> int32; the fast kernel needs n > 16."""
    if len(a) > 16:
        return torch._int_mm(a, b)
    return a.int() @ b.int()


class MemoryIndex:
    def __init__(self, matrix, device: torch.device | str):
        self.matrix = matrix  # a MemoryMatrix: rows(), matrix() -> [rows, n_mem, hidden]
        self.device = torch.device(device)
        self.dtype = DTYPES[matrix.dtype]
        self.n_mem, self.hidden = matrix.shape
        self.half = self.n_mem * self.hidden // 2  # a byte holds two codes
        self.rotation = rotation(self.hidden, self.device)
        self.codes: list[torch.Tensor] = []  # blocks of [rows, half] uint8 (filled rows)
        self.scales: list[torch.Tensor] = []  # [rows] float32, on the device
        self._room: torch.Tensor | None = None  # the last block's allocation, rows to come
        self.rows = 0
        self._warned = False

    # -- building --------------------------------------------------------------------------

    def _rotated(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length rows [n, m * d], each memory token rotated: float32."""
        x = F.normalize(x.float().flatten(1), dim=-1).view(-1, self.n_mem, self.hidden)
        return (x @ self.rotation).flatten(1)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, m, d] memory -> codes [n, half] uint8 (two 4-bit values a byte) and scales [n]."""
        x = self._rotated(x)
        scale = x.abs().amax(dim=1).clamp(min=1e-12) / 7
        codes = (x / scale[:, None]).round().clamp(-8, 7).to(torch.int16) + 8  # 0..15
        low, high = codes[:, :self.half], codes[:, self.half:]
        return (low | (high << 4)).to(torch.uint8), scale

    def _block_device(self, nbytes: int) -> torch.device:
        if self.device.type != "cuda":
            return self.device
        free, _ = torch.cuda.mem_get_info(self.device)
        if free - nbytes >= HEADROOM_BYTES:
            return self.device
        if not self._warned:
            log.warning("the GPU is full at %d stored passages: further rows rank from host "
                        "memory, more slowly", self.rows)
            self._warned = True
        return torch.device("cpu")

    def _append(self, codes: torch.Tensor, scales: torch.Tensor) -> None:
        while len(codes):
            if not self.codes or len(self.codes[-1]) == BLOCK_ROWS:
                self.codes.append(codes[:0])
                self.scales.append(scales[:0])
                self._room = None
            filled = len(self.codes[-1])
            take = min(BLOCK_ROWS - filled, len(codes))
            if self._room is None or len(self._room) < filled + take:
                self._grow(filled + take)
            self._room[filled:filled + take] = codes[:take]
            self.codes[-1] = self._room[:filled + take]
            self.scales[-1] = torch.cat([self.scales[-1], scales[:take]])
            codes, scales = codes[take:], scales[take:]

    def _grow(self, rows: int) -> None:
        """Room for `rows` rows in the last block. Its allocation doubles as rows come (each
        row is copied a few times at most, not at every refresh), up to BLOCK_ROWS."""
        capacity = min(BLOCK_ROWS, max(FIRST_ROWS, 1 << (rows - 1).bit_length()))
        room = self._allocate(capacity, self._block_device(capacity * self.half))
        filled = self.codes[-1]
        room[:len(filled)] = filled
        self._room = room

    def _allocate(self, rows: int, device: torch.device) -> torch.Tensor:
        """A block's codes. Held in host memory for a GPU, they are page-locked: each question
        copies them in, and from pageable memory that copy is several times slower."""
        if device.type == "cpu" and self.device.type == "cuda":
            try:
                return torch.empty(rows, self.half, dtype=torch.uint8, pin_memory=True)
            except RuntimeError as e:  # page-locked memory refused (a memlock limit)
                log.warning("cannot pin an index block in host memory, ranking from it "
                            "slowly: %s", e)
        return torch.empty(rows, self.half, dtype=torch.uint8, device=device)

    def refresh(self) -> int:
        """Quantize the rows appended to the matrix file since the last refresh."""
        total = self.matrix.rows()
        if total <= self.rows:
            return 0
        rows = self.matrix.matrix()
        step = max(1, CHUNK_BYTES // (2 * self.half * 2))
        for start in range(self.rows, total, step):
            block = self._load(rows[start:min(start + step, total)])
            self._append(*self._quantize(block))
        added, self.rows = total - self.rows, total
        return added

    def _load(self, rows: np.ndarray) -> torch.Tensor:
        """Rows of the matrix file as a tensor on the device."""
        block = torch.from_numpy(np.array(rows))  # a copy: the map is read-only
        if self.dtype == torch.bfloat16:
            block = block.view(torch.bfloat16)
        return block.to(self.device)

    def exact(self, rows: torch.Tensor) -> torch.Tensor:
        """The stored memory of these rows, exactly: [n, n_mem, hidden] on the device."""
        order = rows.cpu().numpy()
        return self._load(self.matrix.matrix()[order])

    # -- searching -------------------------------------------------------------------------

    def coarse(self, queries: torch.Tensor) -> torch.Tensor:
        """Approximate cosine of each query with every row: [b, rows] float32. Codes and the
        8-bit query meet in integer matrix products: nothing is unpacked to floating point."""
        q = self._rotated(queries.to(self.device))  # [b, 2 * half]
        q_scale = q.abs().amax(dim=1).clamp(min=1e-12) / 127
        q8 = (q / q_scale[:, None]).round().to(torch.int8)
        # int8 products want at least 8 columns: pad the queries with zero rows
        cols = torch.zeros(-(-len(q) // 8) * 8, q8.shape[1], dtype=torch.int8, device=q.device)
        cols[:len(q)] = q8
        # column-major, as the integer kernel wants its second operand
        q_low, q_high = cols[:, :self.half].contiguous().T, cols[:, self.half:].contiguous().T
        offset = 8 * cols.sum(dim=1, dtype=torch.int32)  # codes are stored as value + 8
        step = max(17, CHUNK_BYTES // self.half)  # int8 products want more than 16 rows
        out = []
        for codes, scales in zip(self.codes, self.scales, strict=True):
            for start in range(0, len(codes), step):
                chunk = codes[start:start + step].to(self.device, non_blocking=True)
                dots = int8_mm((chunk & 15).view(torch.int8), q_low)
                dots += int8_mm((chunk >> 4).view(torch.int8), q_high)
                out.append((dots - offset)[:, :len(q)] * scales[start:start + step, None])
        if not out:
            return torch.empty(len(q), 0, device=self.device)
        return torch.cat(out).T * q_scale[:, None]

    def search(self, queries: torch.Tensor, k: int,
               allowed: list[torch.Tensor | None] | None = None):
        """Top-k rows of each query by exact cosine among the best RESCORE by the codes.
        Returns one (rows [k'], scores [k'], memory [k', n_mem, hidden]) per query, best
        first; allowed: per query the rows it may choose from (None: all)."""
        if self.rows == 0:
            raise InputError("no stored memory to rank")
        coarse = self.coarse(queries)
        picks = []
        for i, rows in enumerate(allowed or [None] * len(queries)):
            score = coarse[i]
            if rows is not None:
                rows = rows.to(self.device)
                if rows.numel() == 0:
                    raise InputError("no candidate passages to rank")
                score = score[rows]
            best = score.topk(min(max(RESCORE, 4 * k), score.shape[0])).indices
            best = best if rows is None else rows[best]
            memory = self.exact(best)
            exact = F.normalize(memory.float().flatten(1), dim=-1) @ F.normalize(
                queries[i].float().to(self.device), dim=-1)
            top, order = exact.topk(min(k, len(best)))
            picks.append((best[order].cpu(), top.cpu(), memory[order]))
        return picks
