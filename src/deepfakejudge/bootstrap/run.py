"""One bootstrap run: read the annotated images, replay the journal, drive the engine, write the
outputs, the report and the summary. `plan_dry_run` gathers the prompts a run would send instead
of calling anything (the CLI prints them).

Run folder (`--out DIR`): `journal.jsonl` (the state), the outputs (see `outputs`),
`errors.jsonl` (bad input rows, unreadable images, failed model calls: one row each),
`stats.json` (the report) and `summary.json` (settings, provenance, counts, this run's figures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..backends.cache import CachedBackend
from ..data import InputError, load_records, open_image
from ..data.images import MAX_IMAGE_PIXELS
from ..errors import UsageError
from ..records import RowError, Sample
from ..results import MODEL_ERROR_FIELD, error_row, provenance
from .engine import CallSettings, Engine, RunCounters
from .journal import Journal
from .outputs import TEST_LAYOUTS, _write_jsonl, split_of, write_outputs
from .prompts import LEVELS, RolePrompts, gold_response
from .state import Settings, Unit
from .stats import progress_postfix, report


@dataclass(frozen=True)
class BootstrapConfig:
    data: Path
    out: Path
    settings: Settings = field(default_factory=Settings)
    calls: CallSettings = field(default_factory=CallSettings)
    seed: int = 0
    test_fraction: float = 0.2  # about a fifth of the images, as the released DFJ-Meta test set
    test_layout: str = "released"  # outputs.TEST_LAYOUTS
    pairs_per_image: int | None = None
    limit: int | None = None
    retry_failed: bool = False
    max_image_pixels: int = MAX_IMAGE_PIXELS
    # Images are read only from the data file's folder and these (--image-root); not part of the
    # fingerprint: it decides which files may be read, not what a run produces from them.
    image_roots: tuple[str | Path, ...] = ()

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise UsageError(f"--limit must be >= 0, got {self.limit}")
        if self.pairs_per_image is not None and self.pairs_per_image < 0:
            raise UsageError(f"--pairs-per-image must be >= 0, got {self.pairs_per_image}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise UsageError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.test_layout not in TEST_LAYOUTS:
            raise UsageError(f"--test-layout must be one of {', '.join(TEST_LAYOUTS)}, got {self.test_layout!r}")

    def fingerprint(self) -> dict[str, Any]:
        """What decides the data a run produces; a resumed run must match it."""
        calls = self.calls
        return {
            "data": str(self.data.resolve()),
            "seed": self.seed,
            "loop": asdict(self.settings),
            "generator_sampling": asdict(calls.generator),
            "evaluator_sampling": asdict(calls.evaluator),
            "evaluator_mode": calls.evaluator_mode,
            "max_image_pixels": self.max_image_pixels,
        }


@dataclass(frozen=True)
class BootstrapResult:
    out: Path
    summary: dict[str, Any]
    stats: dict[str, Any]
    errors: int


def make_units(samples: list[Sample], settings: Settings, no_paraphrases: frozenset[str] = frozenset()) -> list[Unit]:
    """One unit per (image, level); level 5 holds the gold rationale unless `level5` is "generated";
    images in `no_paraphrases` (the test images of the released layout) get no paraphrase slots."""
    gold = settings.level5 == "gold"
    return [Unit(s.id, k, gold=gold_response(s) if gold and k == 5 else None,
                 paraphrases=0 if s.id in no_paraphrases else None) for s in samples for k in LEVELS]


def select_samples(config: BootstrapConfig) -> tuple[list[Sample], list[RowError]]:
    """The annotated images to bootstrap (the first `limit`), and rows that cannot be used."""
    dataset = load_records(config.data, image_roots=config.image_roots)
    errors = list(dataset.errors)
    samples = list(dataset.samples)
    if config.limit is not None:
        samples = samples[: config.limit]
    usable = []
    for s in samples:
        if not (s.rationale or "").strip():
            errors.append(RowError(s.where, "rationale", "is empty: bootstrapping needs the gold rationale", id=s.id))
        else:
            usable.append(s)
    return usable, errors


class _Bar:
    """tqdm on stderr with acceptance counts, or nothing."""

    def __init__(self, factory: Callable[[int], Any] | None, units: list[Unit], settings: Settings) -> None:
        self.units, self.settings = units, settings
        self.bar = factory(len(units)) if factory else None
        self.done = 0
        self.update()

    def update(self, _touched: list[Unit] | None = None) -> None:
        if self.bar is None:
            return
        done = sum(u.finished(self.settings) for u in self.units)
        self.bar.update(done - self.done)
        self.done = done
        self.bar.set_postfix_str(progress_postfix(self.units, self.settings), refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_bootstrap(
    config: BootstrapConfig,
    prompts: RolePrompts,
    open_backends: Callable[[], tuple[Backend, Backend]],
    *,
    identity: dict[str, Any] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> BootstrapResult:
    """Bootstrap every selected image; resumes from `config.out/journal.jsonl`.

    `open_backends()` returns (generator, evaluator), possibly the same object; it is called only
    when some unit still needs a call, and the backends are closed at the end. `identity` names
    the models (part of the fingerprint: a resumed run must use the same ones).
    """
    samples, errors = select_samples(config)
    by_id = {s.id: s for s in samples}
    # The split is planned before any call: the released test layout keeps no paraphrase, so test
    # images are not paraphrased (a later run with another layout or fraction makes what it lacks).
    split = split_of([s.id for s in samples], config.test_fraction, config.seed)
    test_ids = frozenset(i for i, part in split.items() if part == "test")
    units = make_units(samples, config.settings, test_ids if config.test_layout == "released" else frozenset())
    fingerprint = {**config.fingerprint(), "models": identity or {}, "prompts": prompts.provenance()}
    info = {"provenance": provenance()}
    config.out.mkdir(parents=True, exist_ok=True)
    with Journal(config.out, fingerprint, info) as journal:
        index = {u.key: u for u in units}
        for event in journal.events:
            unit = index.get(event.get("u", ""))
            if unit is not None:  # events of images beyond --limit wait for a run that includes them
                unit.apply(event, retry_failed=config.retry_failed)
        backends_info = None
        engine: Engine | None = None
        opened: tuple[Backend, Backend] | None = None
        bar = None
        try:
            if any(not u.finished(config.settings) for u in units):
                opened = open_backends()
                generator, evaluator = opened
                backends_info = {"generator": generator.describe(), "evaluator": evaluator.describe()}
                bar = _Bar(progress, units, config.settings)
                engine = Engine(by_id, units, prompts, config.settings, config.calls, generator, evaluator,
                                journal, config.max_image_pixels, on_step=bar.update)
                engine.run()
        finally:
            if bar is not None:
                bar.close()
            if opened is not None:
                # Described again at the end: a server pool's per-server counts are the run's.
                backends_info = {"generator": opened[0].describe(), "evaluator": opened[1].describe()}
                for backend in {id(b): b for b in opened}.values():
                    backend.close()
            counters = engine.counters if engine is not None else RunCounters()  # an interrupted run's too
            if opened is not None:
                counters.cached = sum(_cache_hits(b) for b in {id(b): b for b in opened}.values())
            result = _finish(config, prompts, by_id, units, errors, engine, journal, counters,
                             backends_info, fingerprint, split)
    return result


def _finish(config: BootstrapConfig, prompts: RolePrompts, samples: dict[str, Sample], units: list[Unit],
            errors: list[RowError], engine: Engine | None, journal: Journal, counters: RunCounters,
            backends_info: dict[str, Any] | None, fingerprint: dict[str, Any],
            split: dict[str, str] | None = None) -> BootstrapResult:
    image_errors = engine.image_errors if engine is not None else {}
    errors = errors + list(image_errors.values())
    live = [u for u in units if u.image_id not in image_errors]
    rows = [error_row(e) for e in errors]
    for u in live:
        sample = samples[u.image_id]
        if u.failure is not None:
            rows.append({"id": f"{u.image_id}-l{u.level}", "where": sample.where, "field": MODEL_ERROR_FIELD,
                         "error": f"{u.failure_role}: {u.failure}"})
        for j, slot in sorted(u.slots.items()):
            if slot.failure is not None:
                rows.append({"id": f"{u.image_id}-l{u.level}-p{j}", "where": sample.where, "field": MODEL_ERROR_FIELD,
                             "error": f"paraphrase: {slot.failure}"})
    _write_jsonl(config.out / "errors.jsonl", rows)
    outputs = write_outputs(config.out, samples, live, config.settings, prompts, seed=config.seed,
                            test_fraction=config.test_fraction, pairs_per_image=config.pairs_per_image,
                            test_layout=config.test_layout, split=split)
    stats = report(live, config.settings, journal.events)
    stats["outputs"] = outputs
    stats["errors"] = len(rows)
    complete = all(u.finished(config.settings) for u in live)
    summary = {
        "data": str(config.data),
        "out": str(config.out),
        "images": len({u.image_id for u in live}),
        "complete": complete,
        "errors": len(rows),
        "outputs": outputs,
        "acceptance_rate": stats["acceptance_rate"],
        "mean_rounds": stats["mean_rounds"],
        "usage": stats["usage"],
        "this_run": {
            "runs_so_far": journal.runs + 1,
            "steps": counters.steps,
            "seconds": round(counters.seconds, 3),
            "calls": dict(counters.calls),
            "calls_total": sum(counters.calls.values()),
            "calls_from_cache": counters.cached,
            "generated_tokens": sum(counters.tokens.values()),
            "prompt_tokens": sum(counters.prompt_tokens.values()),
        },
        "settings": {**fingerprint, "batch_size": config.calls.batch_size, "limit": config.limit,
                     "test_fraction": config.test_fraction, "test_layout": config.test_layout,
                     "pairs_per_image": config.pairs_per_image,
                     "retry_failed": config.retry_failed},
        "backends": backends_info,
        "provenance": provenance(),
    }
    _write_json(config.out / "stats.json", stats)
    _write_json(config.out / "summary.json", summary)
    return BootstrapResult(out=config.out, summary=summary, stats=stats, errors=len(rows))


def _cache_hits(backend: Backend) -> int:
    return backend.cache.hits if isinstance(backend, CachedBackend) else 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def call_bounds(images: int, settings: Settings) -> tuple[int, int]:
    """(fewest, most) model calls for `images` (evaluator re-asks not included). A gold level 5
    costs one evaluation and its paraphrases; a generated level 2 to 2 (1 + rounds) calls more."""
    per_para = 1 + int(settings.recheck)
    generated = len(LEVELS) - int(settings.level5 == "gold")
    gold = len(LEVELS) - generated
    paraphrases = len(LEVELS) * settings.paraphrases * per_para
    low = images * (2 * generated + gold + paraphrases)
    high = images * (2 * (1 + settings.rounds) * generated + gold
                     + paraphrases * (1 + settings.paraphrase_retries))
    return low, high


@dataclass(frozen=True)
class ShownPrompt:
    """One prompt of a dry run: what it is (role, image, level) and its text."""

    title: str
    text: str


@dataclass(frozen=True)
class DryRunPlan:
    """What a run would send, without sending it: the first-round prompts of every selected unit
    (one example of each other role), the input errors, and the bounds on model calls."""

    prompts: tuple[ShownPrompt, ...]
    errors: tuple[RowError, ...]
    images: int  # images that opened
    test_images: int
    units: int
    calls: tuple[int, int]  # (fewest, most) model calls, as `call_bounds`


def plan_dry_run(config: BootstrapConfig, prompts: RolePrompts) -> DryRunPlan:
    """The first-round prompts of every selected unit (and one example of each other role); no
    model is loaded and nothing is written."""
    samples, errors = select_samples(config)
    mode = config.calls.evaluator_mode
    shown: list[ShownPrompt] = []
    shown_roles = False
    opened: list[str] = []
    for sample in samples:
        try:
            size = open_image(sample, config.max_image_pixels).size
        except InputError as exc:
            errors.append(RowError(sample.where, exc.field, exc.message, id=sample.id))
            continue
        opened.append(sample.id)
        for level in sorted(LEVELS, reverse=True):
            if level == 5 and config.settings.level5 == "gold":
                shown.append(ShownPrompt(
                    f"gold · {sample.id} · level 5 · the annotated rationale, rated, never generated",
                    gold_response(sample)))
                continue
            shown.append(ShownPrompt(f"generate · {sample.id} · level {level} · image {sample.image}",
                                     prompts.generate_text(sample, level, size)))
        if not shown_roles:
            shown_roles = True
            level = 3
            draft = f"<reasoning>[the level-{level} explanation]</reasoning> <answer>{'real' if sample.label == 'real' else 'fake'}</answer>"
            shown.append(ShownPrompt(
                f"evaluate · {sample.id} · level {level} · image {sample.image} · {prompts.evaluator_kind}"
                + (" · score-only prefix" if mode == "score-only" else ""),
                prompts.evaluate_text(sample, draft, size)))
            shown.append(ShownPrompt(
                f"refine · {sample.id} · level {level} · image {sample.image} · e.g. after a rating of 5",
                prompts.refine_text(sample, level, size, f"[the level-{level} explanation]", 5,
                                    "[the evaluator's justification]")))
            shown.append(ShownPrompt(f"paraphrase · {sample.id} · level {level} · variant 1 · text only",
                                     prompts.paraphrase_text(sample, level, f"[the accepted level-{level} explanation]", 1)))
    images = len(opened)
    n_test = sum(part == "test" for part in split_of(opened, config.test_fraction, config.seed).values())
    unparaphrased = n_test if config.test_layout == "released" else 0  # the released test layout keeps none
    low, high = call_bounds(images - unparaphrased, config.settings)
    if unparaphrased:
        low, high = (a + b for a, b in zip((low, high), call_bounds(unparaphrased, replace(config.settings, paraphrases=0))))
    return DryRunPlan(prompts=tuple(shown), errors=tuple(errors), images=images, test_images=n_test,
                      units=images * len(LEVELS), calls=(low, high))
