"""Judge throughput: the released way against the project's paths, same process, same inputs.

Qwen2.5-VL at the real 3B / 7B shapes with random weights (see common.py), for workload A (448 px
image, ~608-token prompt) and B (980 px, ~1,577 tokens). Paths, each timed after a warm-up as the
median of repeats, device-synchronised, from `ChatRequest`s (PIL images + text) to the answer, so
image preprocessing is inside every figure. The baselines (naive, hf_*, vision_only) run
transformers' own vision attention; the project's paths (vision_grouped, ours_*) the grouped one
that `HFBackend` switches on (backends/vision_attention.py):

  naive_generate_bs1   processor + `generate` 64 tokens, one sample at a time (the released script)
  hf_generate          the same batched
  hf_score_forward     processor + one batched forward from pixels, next-token distribution
  vision_only          the vision tower on preprocessed pixels (images/s), for its own floor: transformers'
                       attention, one sdpa call per window of every image
  vision_grouped       the same with the project's grouped attention (windows of one length batched)
  preprocess_only      the image processor alone (CPU, images/s)
  ours_score_cold      HFBackend.choice_probs, vision cache emptied before every call
  ours_score_warm      the same with every image's embeddings already cached
  ours_pointwise_x5    PointwiseJudge score-only over 5 records per image (DFJ-Meta), cache cold
  ours_pointwise_x5_files  the same through `judge.score` from PNG files (decode + hash per record)
  ours_pairwise_both   PairwiseJudge score-only, both orders (pairs/s; images shared), cache cold
  ours_generate        HFBackend.generate 64 tokens batched, with per-step log-probs, cache cold

Score paths are checked against a plain forward per request (batch 1, no padding, from pixels):
max |difference| of the choice log-probabilities and of the distribution over the choices.

  python benchmarks/judge_throughput.py --tiny                      # CPU, seconds
  python benchmarks/judge_throughput.py --sizes 3B 7B --workloads A B --out $OUT
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Device, Workload, log

PATHS = (
    "naive_generate_bs1", "hf_generate", "hf_score_forward", "vision_only", "vision_grouped", "preprocess_only",
    "ours_score_cold", "ours_score_warm", "ours_pointwise_x5", "ours_pointwise_x5_files",
    "ours_pairwise_both", "ours_generate",
)
# Parity tolerances: choice log-probabilities and the distribution renormalised over the choices.
# vision_grouped: max |difference| of the embeddings relative to their largest magnitude.
TOLERANCE = {"float32": {"logprob": 1e-3, "prob": 1e-4, "embed_rel": 1e-5},
             "bfloat16": {"logprob": 0.1, "prob": 0.02, "embed_rel": 0.02}}
RECORDS_PER_IMAGE = 5

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, seconds (the test mode)")
    p.add_argument("--sizes", nargs="+", choices=sorted(common.SIZES), help="default 3B 7B (tiny with --tiny)")
    p.add_argument("--workloads", nargs="+", choices=sorted(common.WORKLOADS), default=["A", "B"])
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--batch", type=int, help="requests per batch (default 32 for A, 16 for B; 4 with --tiny)")
    p.add_argument("--new-tokens", type=int, help="generated tokens (default 64; 16 with --tiny)")
    p.add_argument("--repeats", type=int, help="timed calls per path (default 3; generate paths 2)")
    p.add_argument("--naive-samples", type=int, help="samples timed one by one on the naive path (default 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(common.RESULTS_DIR), help="folder for the JSON results")
    args = p.parse_args(argv)
    args.sizes = args.sizes or (["tiny"] if args.tiny else ["3B", "7B"])
    args.new_tokens = args.new_tokens or (16 if args.tiny else 64)
    args.repeats = args.repeats or 3
    args.naive_samples = args.naive_samples or (2 if args.tiny else 3)
    for name in ("batch", "new_tokens", "repeats", "naive_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


class Bench:
    """One model, one processor and backend, and the rows measured with them."""

    def __init__(self, args, dev: Device, size: str, processor, ceilings: dict[str, float], workdir: Path,
                 saved: Callable[[list[dict[str, Any]]], None] = lambda rows: None):
        from deepfakejudge.backends.base import LoadOptions, PixelBudget
        from deepfakejudge.backends.hf import HFBackend

        self.args, self.dev, self.size, self.processor, self.ceilings = args, dev, size, processor, ceilings
        self.workdir, self.saved = workdir, saved  # saved(rows): results so far, written after every row
        self.model = common.build_model(size, processor, dev)
        self.config = self.model.config
        options = LoadOptions(model=f"random-Qwen2.5-VL-{size}", budget=PixelBudget(common.MIN_PIXELS, common.MAX_PIXELS))
        self.backend = HFBackend.from_loaded(self.model, processor, options)
        self.ours(False)  # from_loaded switched the grouped vision attention on; baselines run without
        self.bytes_per = 2 if dev.cuda else 4
        self.weight_bytes = (common.llm_linear_params(self.config) + common.head_params(self.config)) * self.bytes_per
        self.vision_bytes = common.vision_params(self.config) * self.bytes_per
        self.rows: list[dict[str, Any]] = []
        self.naive_rate: float | None = None

    def ours(self, on: bool) -> None:
        """The project's vision attention (on) or transformers' (off) for what runs next."""
        from deepfakejudge.backends.vision_attention import set_grouped_vision_attention

        set_grouped_vision_attention(self.model, on)

    # -- inputs ------------------------------------------------------------------------------

    def prepare(self, wl: Workload):
        """Images, samples and requests of one workload, the prompts tuned to its token count."""
        from deepfakejudge.data import LoadedImage
        from deepfakejudge.judge import PairwiseJudge, PointwiseJudge
        from deepfakejudge.judge.common import Prepared
        from deepfakejudge.records import CHOICES, SCORES, Sample

        n = self.args.batch or (4 if self.args.tiny else 32 if wl.name == "A" else 16)
        n_img5 = math.ceil(n / RECORDS_PER_IMAGE)
        n_pairs = max(1, n // 2)
        images = common.noise_images(max(n, n_img5, n_pairs), wl.side, seed=1 + ord(wl.name))
        loaded = [LoadedImage(img, common.image_key(img)) for img in images]
        files = self.workdir / f"images-{wl.name}"
        files.mkdir(exist_ok=True)
        for i, img in enumerate(images):
            img.save(files / f"{i}.png")

        b = self.backend
        point, pair = common.templates()
        self.point_score = PointwiseJudge(b, template=point, mode="score-only")
        self.point_gen = PointwiseJudge(b, template=point, mode="generate")
        self.pair_score = PairwiseJudge(b, template=pair, mode="score-only")
        context = len(b.heal(self.point_score.score_prefix, SCORES)[0])
        pair_context = len(b.heal(self.pair_score.answer_prefix, CHOICES)[0])

        response = common.explanation

        def point_tokens(words: int) -> int:
            s = Sample("x", files / "0.png", "fake", response=response(words, 0))
            return len(self.processor.prompt_ids(self.point_score.request(s, loaded[0]), wl.visual_tokens)) + context

        def pair_tokens(words: int) -> int:
            s = Sample("x", files / "0.png", "fake", response_a=response(words, 0), response_b=response(words, 7))
            return len(self.processor.prompt_ids(self.pair_score.request(s, loaded[0], False), wl.visual_tokens)) + pair_context

        words = common.fit_words(point_tokens, wl.prompt_tokens)
        pair_words = common.fit_words(pair_tokens, wl.prompt_tokens)
        # Lengths vary by a few words around the target, as real explanations do (left padding).
        jitter = [0, 3, -3, 6, -6]

        def point_sample(i: int, image: int) -> Sample:
            return Sample(f"p{i}", files / f"{image}.png", "fake", response=response(max(1, words + jitter[i % 5]), i))

        single = [point_sample(i, i) for i in range(n)]
        x5 = [point_sample(i, i // RECORDS_PER_IMAGE) for i in range(n_img5 * RECORDS_PER_IMAGE)]
        pairs = [Sample(f"q{i}", files / f"{i}.png", "fake", response_a=response(pair_words + jitter[i % 5], i),
                        response_b=response(pair_words - jitter[i % 5], i + 11)) for i in range(n_pairs)]
        single_prepared = [Prepared(s, loaded[i]) for i, s in enumerate(single)]
        self.x5_prepared = [Prepared(s, loaded[i // RECORDS_PER_IMAGE]) for i, s in enumerate(x5)]
        self.x5_samples = x5
        self.pairs_prepared = [Prepared(s, loaded[i]) for i, s in enumerate(pairs)]
        self.score_requests = [self.point_score.request(p.sample, p.image) for p in single_prepared]
        self.gen_requests = [self.point_gen.request(p.sample, p.image) for p in single_prepared]
        lengths = [len(self.processor.prompt_ids(r, wl.visual_tokens)) + context for r in self.score_requests]
        self.prompt_tokens = sum(lengths) / len(lengths)
        self.gen_prompt_tokens = self.prompt_tokens - context
        log(f"[{self.size}/{wl.name}] batch {n}, prompt {self.prompt_tokens:.0f} tokens "
            f"({wl.visual_tokens} visual), x5: {len(x5)} records on {n_img5} images, pairwise: {n_pairs} pairs")

    # -- floors ------------------------------------------------------------------------------

    def floor(self, wl: Workload, *, images: int, requests: int, tokens: float, new_tokens: int = 0) -> Any:
        f = common.new_floor(self.ceilings)
        c = self.config
        if images:
            f.phase(images * common.vision_flops(c, wl.patches), self.vision_bytes)
        f.phase(requests * common.prefill_flops(c, tokens), self.weight_bytes)
        kv = common.kv_bytes_per_token(c, self.bytes_per)
        for k in range(1, new_tokens):
            ctx = tokens + k
            f.phase(requests * common.decode_step_flops(c, ctx), self.weight_bytes + requests * kv * ctx)
        return f

    # -- measuring ---------------------------------------------------------------------------

    def measure(self, wl: Workload, path: str, unit: str, units: int, fn: Callable[[], Any], floor,
                repeats: int | None = None, **extra: Any) -> dict[str, Any] | None:
        if path not in self.args.paths:
            return None
        row: dict[str, Any] = {"size": self.size, "workload": wl.name, "path": path, "unit": unit, "batch": units,
                               "prompt_tokens": round(self.prompt_tokens, 1), "visual_tokens": wl.visual_tokens}
        self.dev.reset_peak()
        times = None
        try:
            times = common.timed(self.dev, fn, repeats or self.args.repeats)
        except Exception as exc:  # noqa: BLE001 - an OOM or engine failure is a result too: record it, go on
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            log(f"[{self.size}/{wl.name}] {path}: {row['error']}")
            if not common.is_oom(exc):
                traceback.print_exc()
        if times is None:  # outside the except block: the traceback no longer holds the tensors
            self.dev.free()
            self.rows.append(row)
            self.saved(self.rows)
            return row
        t = common.median(times)
        row.update(seconds_median=round(t, 5), seconds_all=[round(x, 5) for x in times],
                   samples_per_s=round(units / t, 4), peak_mem_gib=self.dev.peak_gib(), **extra)
        if floor is not None:
            row.update(floor_samples_per_s=round(units / floor.seconds, 3),
                       floor_compute_samples_per_s=round(units / floor.compute_seconds, 3),
                       pct_of_floor=round(100 * floor.seconds / t, 2),
                       achieved_tflops=round(floor.flops / t / 1e12, 4))
        if self.naive_rate and unit != "images":
            # A pair judged in both orders is two requests: the naive way makes two calls.
            row["ratio_to_naive"] = round(row["samples_per_s"] * (2 if unit == "pairs" else 1) / self.naive_rate, 2)
        log(f"[{self.size}/{wl.name}] {path}: {row['samples_per_s']:.3f} {unit}/s")
        self.rows.append(row)
        self.saved(self.rows)
        return row

    def run(self, wl: Workload) -> list[dict[str, Any]]:
        import torch

        from deepfakejudge.backends.base import GenerationConfig
        from deepfakejudge.records import SCORES

        self.rows = []
        self.prepare(wl)
        dev, model, proc, b, new = self.dev, self.model, self.processor, self.backend, self.args.new_tokens
        n, T, Tg = len(self.score_requests), self.prompt_tokens, self.gen_prompt_tokens
        gen_repeats = min(self.args.repeats, 2)
        on = lambda batch: {k: v.to(dev.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        outputs: dict[str, Any] = {}

        def hf_generate(requests):
            with torch.inference_mode():
                out = model.generate(**on(proc(requests)), max_new_tokens=new, min_new_tokens=new, do_sample=False)
            return out[:, -new:]

        # naive: one sample at a time, each timed on its own (the first is the warm-up).
        self.naive_rate = None
        naive_ids: list[Any] = []
        reqs = self.gen_requests[: self.args.naive_samples + 1]
        it = iter(reqs)
        row = self.measure(wl, "naive_generate_bs1", "samples", 1, lambda: naive_ids.append(hf_generate([next(it)])),
                           self.floor(wl, images=1, requests=1, tokens=Tg, new_tokens=new), repeats=len(reqs) - 1)
        if row and "samples_per_s" in row:
            self.naive_rate = row["samples_per_s"]
            row["ratio_to_naive"] = 1.0

        def hf_score():
            healed = [b.heal(r.prefix, SCORES) for r in self.score_requests]
            with torch.inference_mode():
                batch = on(proc(self.score_requests, tails=[c for c, _ in healed]))
                logits = model(**batch, logits_to_keep=1).logits[:, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                outputs["hf_score"] = [{c: float(logp[i, t]) for c, t in zip(SCORES, ids)} for i, (_, ids) in enumerate(healed)]

        self.measure(wl, "hf_score_forward", "samples", n, hf_score, self.floor(wl, images=n, requests=n, tokens=T))

        pixels, _ = proc.image_inputs(self.score_requests)
        pv, grid = pixels["pixel_values"].to(dev.device, dev.dtype), pixels["image_grid_thw"].to(dev.device)

        def vision(key):
            def call():
                with torch.inference_mode():
                    outputs[key] = model.get_image_features(pv, grid, return_dict=True).pooler_output
            return call

        vfloor = common.new_floor(self.ceilings)
        vfloor.phase(n * common.vision_flops(self.config, wl.patches), self.vision_bytes)
        self.measure(wl, "vision_only", "images", n, vision("vision"), vfloor)
        self.ours(True)
        row = self.measure(wl, "vision_grouped", "images", n, vision("grouped"), vfloor)
        self.ours(False)
        if row is not None and "vision" in outputs and "grouped" in outputs:
            # Same embeddings as transformers' attention, up to the dtype's rounding.
            d = max(float((a.float() - b.float()).abs().max()) for a, b in zip(outputs["vision"], outputs["grouped"]))
            scale = max(float(a.float().abs().max()) for a in outputs["vision"])
            rel = d / scale if scale else 0.0
            ok = rel <= TOLERANCE[str(dev.dtype).removeprefix("torch.")]["embed_rel"]
            row.update(parity_max_abs_embed=d, parity_max_abs_embed_rel=rel, parity_ok=ok)
            log(f"[{self.size}/{wl.name}] parity vision_grouped: max|d embed| {d:.2e} (of max |embed| {scale:.2e})"
                + ("" if ok else "  OUT OF TOLERANCE"))
            del outputs["vision"], outputs["grouped"]
        self.measure(wl, "preprocess_only", "images", n, lambda: proc.image_inputs(self.score_requests), None)
        self.ours(True)

        def cold(fn):
            def call():
                b.vision_cache.clear()
                return fn()
            return call

        def keep(name, fn):
            return lambda: outputs.__setitem__(name, fn())

        score = lambda: b.choice_probs(self.score_requests, SCORES)
        self.measure(wl, "ours_score_cold", "samples", n, keep("cold", cold(score)),
                     self.floor(wl, images=n, requests=n, tokens=T))
        b.vision_cache.clear()
        b.choice_probs(self.score_requests, SCORES)  # fills the cache
        self.measure(wl, "ours_score_warm", "samples", n, keep("warm", score),
                     self.floor(wl, images=0, requests=n, tokens=T), cache=b.vision_cache.stats())
        n5, n5_img = len(self.x5_prepared), len(self.x5_prepared) // RECORDS_PER_IMAGE
        self.measure(wl, "ours_pointwise_x5", "samples", n5,
                     keep("x5", cold(lambda: self.point_score._judge(self.x5_prepared))),
                     self.floor(wl, images=n5_img, requests=n5, tokens=T))
        npairs = len(self.pairs_prepared)
        self.measure(wl, "ours_pairwise_both", "pairs", npairs,
                     keep("pairs", cold(lambda: self.pair_score._judge(self.pairs_prepared, True))),
                     self.floor(wl, images=npairs, requests=2 * npairs, tokens=T))
        self.check_parity(wl, outputs)
        self.saved(self.rows)
        # Slower and less central paths last: a run cut short by its time limit keeps the above.
        self.measure(wl, "ours_pointwise_x5_files", "samples", n5,
                     cold(lambda: self.point_score.score(self.x5_samples, batch_size=n5)),
                     self.floor(wl, images=n5_img, requests=n5, tokens=T))
        m = len(self.gen_requests)
        self.ours(False)
        self.measure(wl, "hf_generate", "samples", m, lambda: outputs.__setitem__("hf_gen", hf_generate(self.gen_requests)),
                     self.floor(wl, images=m, requests=m, tokens=Tg, new_tokens=new), repeats=gen_repeats)

        config = GenerationConfig(max_new_tokens=new)
        self.ours(True)
        self.measure(wl, "ours_generate", "samples", m, keep("gen", cold(lambda: b.generate(self.gen_requests, config))),
                     self.floor(wl, images=m, requests=m, tokens=Tg, new_tokens=new), repeats=gen_repeats)
        self.check_generate(outputs, naive_ids)
        self.ours(False)
        return self.rows

    # -- correctness -------------------------------------------------------------------------

    def reference(self, request, choices) -> dict[str, float]:
        """Choice log-probs from a plain forward: one request, no padding, pixels, no cache."""
        import torch

        context, ids = self.backend.heal(request.prefix, choices)
        batch = self.processor([request], tails=[context])
        self.ours(False)  # the reference is transformers' own forward
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.dev.device) for k, v in batch.items()}).logits[0, -1].float()
        self.ours(True)
        logp = torch.log_softmax(logits, dim=-1)
        return {c: float(logp[t]) for c, t in zip(choices, ids)}

    def check_parity(self, wl: Workload, outputs: dict[str, Any]) -> None:
        from deepfakejudge.records import CHOICES, SCORES

        tol = TOLERANCE[str(self.dev.dtype).removeprefix("torch.")]
        k = min(4, len(self.score_requests))
        ref = [self.reference(r, SCORES) for r in self.score_requests[:k]]

        def renorm(logps: dict[str, float]) -> list[float]:
            top = max(logps.values())
            w = [math.exp(v - top) for v in logps.values()]
            return [x / sum(w) for x in w]

        def compare(path: str, logp_rows=None, prob_rows=None, refs=None) -> None:
            refs = refs or ref
            d_lp = None
            if logp_rows is not None:
                d_lp = max(abs(a[c] - r[c]) for a, r in zip(logp_rows, refs) for c in r)
                prob_rows = [renorm(a) for a in logp_rows]
            d_p = max(abs(x - y) for a, r in zip(prob_rows, refs) for x, y in zip(a, renorm(r)))
            ok = d_p <= tol["prob"] and (d_lp is None or d_lp <= tol["logprob"])
            for row in self.rows:
                if row["path"] == path:
                    row.update(parity_max_abs_prob=d_p, parity_max_abs_logprob=d_lp, parity_ok=ok,
                               parity_checked=len(prob_rows))
            log(f"[{self.size}/{wl.name}] parity {path}: max|dp| {d_p:.2e}"
                + (f", max|dlogp| {d_lp:.2e}" if d_lp is not None else "") + ("" if ok else "  OUT OF TOLERANCE"))

        if "hf_score" in outputs:
            compare("hf_score_forward", logp_rows=outputs["hf_score"][:k])
        for key, path in (("cold", "ours_score_cold"), ("warm", "ours_score_warm")):
            if key in outputs:
                compare(path, logp_rows=[{c: math.log(p) for c, p in d.items()} for d in outputs[key][:k]])
        if "x5" in outputs:
            k5 = min(RECORDS_PER_IMAGE + 1, len(self.x5_prepared))
            refs = [self.reference(self.point_score.request(p.sample, p.image), SCORES) for p in self.x5_prepared[:k5]]
            compare("ours_pointwise_x5", prob_rows=[list(v.probs) for v in outputs["x5"][:k5]], refs=refs)
        if "pairs" in outputs:
            kp = min(2, len(self.pairs_prepared))
            refs, rows = [], []
            for p, v in zip(self.pairs_prepared[:kp], outputs["pairs"][:kp]):
                for order in v.orders:
                    refs.append(self.reference(self.pair_score.request(p.sample, p.image, order.swapped), CHOICES))
                    rows.append([order.p_a, 1.0 - order.p_a])
            compare("ours_pairwise_both", prob_rows=rows, refs=refs)

    def check_generate(self, outputs: dict[str, Any], naive_ids: list[Any]) -> None:
        """Generated tokens: every generate path wrote exactly --new-tokens tokens, and the texts
        agree with the naive path's for the samples both ran (information, not a tolerance:
        greedy decoding may flip on near-ties under different batch shapes)."""
        tok = self.processor.tokenizer
        naive_texts = [tok.decode(ids[0].tolist(), skip_special_tokens=True) for ids in naive_ids[1:]]
        for row in self.rows:
            if row["path"] == "hf_generate" and "hf_gen" in outputs:
                texts = [tok.decode(ids.tolist(), skip_special_tokens=True) for ids in outputs["hf_gen"]]
                row["new_tokens_each"] = int(outputs["hf_gen"].shape[1])
            elif row["path"] == "ours_generate" and "gen" in outputs:
                texts = [g.text for g in outputs["gen"]]
                row["finished_by_length"] = sum(g.finish_reason == "length" for g in outputs["gen"])
                row["new_tokens_each"] = min(len(g.steps) for g in outputs["gen"])
            else:
                continue
            # The naive path timed requests 1..k (request 0 was its warm-up).
            pairs = list(zip(naive_texts, texts[1 : 1 + len(naive_texts)]))
            row["same_text_as_naive"] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}" if pairs else None


COLUMNS = [
    ("size", "size", ""), ("workload", "wl", ""), ("path", "path", ""), ("batch", "batch", ""),
    ("samples_per_s", "per s", ".4g"), ("unit", "unit", ""), ("ratio_to_naive", "x naive", ".3g"),
    ("pct_of_floor", "% floor", ".3g"), ("floor_samples_per_s", "floor/s", ".4g"),
    ("peak_mem_gib", "peak GiB", ".4g"), ("parity_max_abs_prob", "max|dp|", ".2e"),
    ("parity_max_abs_logprob", "max|dlogp|", ".2e"), ("error", "error", ""),
]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.env_threads(args.tiny)
    dev = Device(args.device)
    result = common.header("judge_throughput", dev, args)
    result["tolerance"] = TOLERANCE[result["dtype"]]
    result["ceilings"] = common.measure_ceilings(dev)
    log(f"{result['card']}: {result['ceilings']}")
    workloads = common.TINY_WORKLOADS if args.tiny else common.WORKLOADS
    result["workloads"] = {w: vars(workloads[w]) for w in args.workloads}
    path = common.results_path(args.out, "judge_throughput", result)
    with tempfile.TemporaryDirectory() as tmp:
        processor = common.build_processor(tmp)
        for size in args.sizes:
            try:
                bench = Bench(args, dev, size, processor, result["ceilings"], Path(tmp),
                              lambda rows: common.save(dict(result, runs=result["runs"] + rows), path))
            except Exception as exc:  # noqa: BLE001 - recorded in the results, the run goes on
                result["runs"].append({"size": size, "path": "build", "error": f"{type(exc).__name__}: {exc}"[:400]})
                traceback.print_exc()
                continue
            for w in args.workloads:
                try:
                    result["runs"].extend(bench.run(workloads[w]))
                except Exception as exc:  # noqa: BLE001 - recorded in the results, the run goes on
                    result["runs"].append({"size": size, "workload": w, "path": "setup",
                                           "error": f"{type(exc).__name__}: {exc}"[:400]})
                    traceback.print_exc()
                common.save(result, path)
            bench.backend.close()
            del bench
            dev.free()
    checked = [r for r in result["runs"] if "parity_ok" in r]
    parity_ok = bool(checked) and all(r["parity_ok"] for r in checked)
    return common.finish(result, path, "judge throughput", COLUMNS, parity_ok)


if __name__ == "__main__":
    sys.exit(main())
