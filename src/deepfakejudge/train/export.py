"""Merge a LoRA adapter into its base and save a standalone checkpoint, then check parity.

The export is a plain Qwen2.5-VL checkpoint (transformers `save_pretrained`, original weight
names) with the base's tokenizer, chat template, preprocessor and video preprocessor configs,
so transformers, vLLM and the project's own backend load it like any released judge. The
preprocessor configs carry the training pixel budget, so engines that read them (vLLM) see
images at the size the judge was trained on; the run record (`dfj_train.json`,
`dfj_template.txt`) is copied too, so `dfj judge --model EXPORT` reuses template and budget.

Parity: the adapter on the base and the merged checkpoint judge the same sample in score-only
mode, both in the export's dtype; the largest absolute difference of any choice probability must stay within the tolerance:
1e-3 for a float32 export (only summation order differs), 5e-2 for bfloat16/float16 (the merge
rounds W + BA to 16 bits once, while the adapter adds BA in higher precision at every call).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..backends.base import LoadOptions, PixelBudget
from ..backends.processor import is_local_model
from ..data.jsonl import read_json_file
from ..errors import InputError, MissingExtra, UsageError
from ..runtime import resolve_device
from .record import RUN_FILE, TEMPLATE_FILE, load_trained_judge

PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "video_preprocessor_config.json",
)
BUDGET_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")
EXPORT_FILE = "dfj_export.json"
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


@dataclass(frozen=True)
class Parity:
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    same_argmax: float  # fraction of items whose most likely choice is the same
    tolerance: float
    passed: bool
    device: str
    dtype: str


@dataclass(frozen=True)
class ExportOutcome:
    out: Path
    base: str
    dtype: str
    copied: tuple[str, ...]
    parity: Parity | None


def adapter_base(adapter: Path, base: str | None) -> str:
    """`base` if given, else the run record's base, else adapter_config.json's."""
    if not (adapter / "adapter_config.json").is_file():
        raise InputError(f"--adapter {adapter}: no adapter_config.json; pass the folder `dfj train` wrote (--out)")
    if base:
        return base
    trained = load_trained_judge(adapter)
    if trained is not None:
        return trained.base
    config = read_json_file(adapter / "adapter_config.json", f"--adapter {adapter}")
    found = config.get("base_model_name_or_path")
    if not found:
        raise UsageError(f"--adapter {adapter}: the base model is not recorded; pass --base")
    return found


def _copy_processor_files(base: str, out: Path, budget: PixelBudget | None) -> list[str]:
    copied = []
    for name in PROCESSOR_FILES:
        if is_local_model(base):
            source = Path(base) / name
            if not source.is_file():
                continue
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                source = Path(hf_hub_download(base, name))
            except EntryNotFoundError:
                continue
        shutil.copyfile(source, out / name)
        copied.append(name)
    if budget is not None:
        for name in BUDGET_FILES:
            path = out / name
            if path.is_file():
                config = json.loads(path.read_text(encoding="utf-8"))
                config["min_pixels"], config["max_pixels"] = budget.min_pixels, budget.max_pixels
                if isinstance(config.get("size"), dict):
                    config["size"] = {"shortest_edge": budget.min_pixels, "longest_edge": budget.max_pixels}
                path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return copied


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "auto",
                  overwrite: bool = False) -> tuple[str, str, list[str]]:
    """Merge and save; returns (base, saved dtype, processor files copied)."""
    import torch
    from transformers import AutoConfig

    try:
        from peft import PeftModel
    except ImportError as exc:
        raise MissingExtra("dfj export needs peft: pip install 'deepfakejudge[train]'") from exc

    from ..backends.hf import model_classes

    adapter, out = Path(adapter), Path(out)
    base = adapter_base(adapter, base)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: exists and is not empty; choose a new folder or pass --overwrite")
    if out.resolve() == adapter.resolve():
        raise UsageError("--out must differ from --adapter")
    is_local_model(base)
    model_type = AutoConfig.from_pretrained(base).model_type
    classes = model_classes()
    if model_type not in classes:
        raise UsageError(f"base '{base}': architecture '{model_type}' is not supported (supported: {', '.join(classes)})")
    if dtype not in ("auto", *TOLERANCE):
        raise UsageError(f"--dtype must be auto, {', '.join(TOLERANCE)}; got {dtype!r}")
    # "auto": the checkpoint's own dtype (bf16 for the released Qwen2.5-VL models).
    model = classes[model_type].from_pretrained(base, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    trained = load_trained_judge(adapter)
    copied = _copy_processor_files(base, out, trained.budget if trained else None)
    if trained is not None:
        for name in (RUN_FILE, TEMPLATE_FILE):
            shutil.copyfile(adapter / name, out / name)
    saved_dtype = str(merged.dtype).removeprefix("torch.")
    return base, saved_dtype, copied


def parity_check(base: str, adapter: str | Path, merged: str | Path, samples: list[Any], kind: str,
                 template: Any, budget: PixelBudget, device: str = "auto", tolerance: float | None = None,
                 export_dtype: str = "float32") -> Parity:
    """Judge `samples` (score-only) with base+adapter and with the merged checkpoint; compare."""
    from ..backends.hf import HFBackend
    from ..judge import PairwiseJudge, PointwiseJudge

    def probabilities(options: LoadOptions) -> tuple[list[list[float]], str, str]:
        backend = HFBackend(options)
        try:
            if kind == "pointwise":
                verdicts = PointwiseJudge(backend, template=template, mode="score-only").score(samples)
                rows = [list(v.probs) if getattr(v, "probs", None) else None for v in verdicts]
            else:
                verdicts = PairwiseJudge(backend, template=template, mode="score-only").compare(samples, both_orders=False)
                rows = [[v.p_a, 1 - v.p_a] if getattr(v, "p_a", None) is not None else None for v in verdicts]
            info = backend.describe()
        finally:
            backend.close()
        if any(r is None for r in rows):
            bad = [getattr(v, "where", "") or getattr(v, "id", "") for v, r in zip(verdicts, rows) if r is None]
            raise InputError(f"parity: no score distribution for {bad[:3]}; pass --parity-data with usable rows")
        return rows, info["device"], info["dtype"]

    # Both run in the export's dtype, the precision the tolerance is stated for.
    with_adapter, dev, dt = probabilities(
        LoadOptions(model=base, adapter=str(adapter), device=device, dtype=export_dtype, budget=budget))
    exported, _, _ = probabilities(LoadOptions(model=str(merged), device=device, dtype=export_dtype, budget=budget))
    diffs = [abs(a - b) for ra, rb in zip(with_adapter, exported) for a, b in zip(ra, rb)]
    same = [max(range(len(ra)), key=ra.__getitem__) == max(range(len(rb)), key=rb.__getitem__)
            for ra, rb in zip(with_adapter, exported)]
    tol = TOLERANCE.get(export_dtype, 5e-2) if tolerance is None else tolerance
    worst = max(diffs)
    return Parity(n=len(samples), max_abs_diff=worst, mean_abs_diff=sum(diffs) / len(diffs),
                  same_argmax=sum(same) / len(same), tolerance=tol, passed=worst <= tol, device=dev, dtype=dt)


def parity_samples(adapter: Path, data: str | None, n: int) -> tuple[list[Any], Any, str, PixelBudget]:
    """Up to `n` usable rows of `data` (default: the adapter's training data), with the template,
    kind and budget the adapter was trained with."""
    from ..data import load_records
    from ..prompts import default_template

    trained = load_trained_judge(adapter)
    if trained is None and data is None:
        raise UsageError(f"--adapter {adapter}: has no {RUN_FILE}; pass --parity-data D (and --kind) or --no-parity")
    kind = trained.kind if trained else "pointwise"
    template = trained.template if trained else default_template(kind)
    budget = trained.budget if trained else PixelBudget()
    source = data or trained.record["data"]["path"]
    dataset = load_records(source, templates=(template,))
    needed = ("response",) if kind == "pointwise" else ("response_a", "response_b")
    usable = [s for s in dataset.samples if all(getattr(s, f) for f in needed)][:n]
    if not usable:
        raise InputError(f"--parity-data {source}: no usable {kind} rows")
    return usable, template, kind, budget


def export(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "auto",
           parity_data: str | None = None, parity_n: int = 8, tolerance: float | None = None,
           device: str = "auto", overwrite: bool = False, check: bool = True) -> ExportOutcome:
    adapter, out = Path(adapter), Path(out)
    if check:  # fail on a bad --device or --parity-data before the (long) merge
        device = str(resolve_device(device))  # the rule judging and training use (runtime)
        samples, template, kind, budget = parity_samples(adapter, parity_data, parity_n)
    base, saved_dtype, copied = merge_adapter(adapter, out, base, dtype, overwrite)
    parity = None
    if check:
        parity = parity_check(base, adapter, out, samples, kind, template, budget, device, tolerance, saved_dtype)
    from ..prompts.official import released_judge

    # The released DFJ judge the export descends from: `dfj judge --model EXPORT` then defaults to
    # the authors' prompt even without the copied training record.
    report = {"adapter": str(adapter), "base": base, "released_judge": released_judge(adapter) or released_judge(base),
              "dtype": saved_dtype, "copied": copied,
              "parity": None if parity is None else asdict(parity)}
    (out / EXPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return ExportOutcome(out, base, saved_dtype, tuple(copied), parity)
