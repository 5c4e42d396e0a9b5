"""LoRA training-step throughput at the judge's shapes: the way TRL does it against cached vision.

Qwen2.5-VL at the real 3B / 7B shapes with random weights (see common.py), LoRA r 32 / alpha 64 on
every linear layer of the language model (the released recipe), vision tower and merger frozen,
AdamW on the adapter, workload B by default (980 px image, ~1,577-token prompt) plus a ~64-token
answer that carries the loss. One step = forward + backward + optimizer step on one batch.

Variants, same batch, same adapter:
  pixels               pixel values in every step, and (with activation checkpointing) the input
                       embeddings hooked to require grad, as TRL's SFTTrainer does for PEFT +
                       checkpointing (`model.enable_input_require_grads()`). transformers names the
                       vision tower's patch embedding its input embedding too, so the frozen vision
                       tower's output requires grad and backward runs through all of its blocks:
                       `vision_backward` in the row says whether it did. The baseline.
  pixels_nograd_vision the vision tower runs every step, under no_grad, its output passed as
                       `mm_encoder_outputs` (what skipping the vision backward alone buys)
  cached               visual embeddings computed once per image beforehand and passed as
                       `mm_encoder_outputs`: no vision work in the step at all (ours)
  cached_answer_logits the same, and the LM head evaluated only where the loss is (left padding puts
                       every answer at the end: `logits_to_keep`), instead of at every position

Each variant runs with activation checkpointing on and off and at each batch size (the slow pixel
variants at the first batch size with checkpointing only, unless --full-grid or --tiny).
Parity: before timing, every variant's loss and adapter gradients are compared with a plain
step (pixels, no checkpointing, no hooks) on the same batch and adapter.

Floor per sample: 2 x the language model's forward FLOPs at the prompt length (forward plus the
input-gradient backward; frozen weights need no weight gradients; no recomputation, no vision),
the LM head counted at the answer positions only. See common.py for the FLOP formulas.

  python benchmarks/train_throughput.py --tiny
  python benchmarks/train_throughput.py --sizes 3B 7B --batch-sizes 8 16 --out $OUT
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Device, log

VARIANTS = ("pixels", "pixels_nograd_vision", "cached", "cached_answer_logits")
TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Parity tolerances: |loss - ref| and ||grad - ref|| / ||ref|| over all adapter weights.
TOLERANCE = {"float32": {"loss": 1e-4, "grad_rel": 1e-3}, "bfloat16": {"loss": 2e-2, "grad_rel": 5e-2}}
PAPER_SAMPLES = 2 * 20_625  # two epochs of DFJ-Meta's pointwise records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, seconds (the test mode)")
    p.add_argument("--sizes", nargs="+", choices=sorted(common.SIZES), help="default 3B 7B (tiny with --tiny)")
    p.add_argument("--workload", choices=sorted(common.WORKLOADS), default="B")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="default 8 16 (2 4 with --tiny)")
    p.add_argument("--checkpointing", nargs="+", choices=["on", "off"], default=["on", "off"])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--full-grid", action="store_true", help="also time the pixel variants at every batch size and without checkpointing")
    p.add_argument("--answer-tokens", type=int, help="tokens carrying the loss (default 64; 16 with --tiny)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--repeats", type=int, help="timed steps per configuration (default 3; 2 for the pixel variants)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(common.RESULTS_DIR), help="folder for the JSON results")
    args = p.parse_args(argv)
    args.sizes = args.sizes or (["tiny"] if args.tiny else ["3B", "7B"])
    args.batch_sizes = args.batch_sizes or ([2, 4] if args.tiny else [8, 16])
    args.answer_tokens = args.answer_tokens or (16 if args.tiny else 64)
    args.repeats = args.repeats or 3
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.answer_tokens < 1:
        p.error("--batch-sizes, --repeats and --answer-tokens must be >= 1")
    return args


class TrainBench:
    def __init__(self, args, dev: Device, size: str, processor, ceilings: dict[str, float],
                 saved: Callable[[list[dict[str, Any]]], None] = lambda rows: None):
        import torch
        from peft import LoraConfig, get_peft_model

        self.args, self.dev, self.size, self.processor, self.ceilings = args, dev, size, processor, ceilings
        self.saved = saved  # saved(rows): results so far, written after every row
        self.wl = (common.TINY_WORKLOADS if args.tiny else common.WORKLOADS)[args.workload]
        model = common.build_model(size, processor, dev)
        for p in model.parameters():
            p.requires_grad_(False)
        # Random A and B (peft's default B = 0 would leave A's gradient zero and the parity check blind).
        lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS, lora_dropout=0.0,
                          init_lora_weights=False)
        torch.manual_seed(0)
        self.pm = get_peft_model(model, lora)
        self.model = model  # the same modules, adapted in place
        self.pm.train()
        self.lora_params = [p for p in self.pm.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in self.lora_params)
        self.vision_backward_calls = 0

        def seen(*_):
            self.vision_backward_calls += 1

        model.model.visual.merger.register_full_backward_hook(seen)
        self.rows: list[dict[str, Any]] = []

    # -- data --------------------------------------------------------------------------------

    def make_batch(self, n: int) -> dict[str, Any]:
        """`n` pointwise training rows: judge prompt (image first) + answer, labels on the answer."""
        import torch

        from deepfakejudge.backends.base import ChatRequest

        proc, wl, dev = self.processor, self.wl, self.dev
        point, _ = common.templates()
        im_end = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
        images = common.noise_images(n, wl.side, seed=3)

        def text(words: int, j: int) -> str:
            return point.fill(ground_truth_label="fake", candidate_response=common.explanation(words, j))

        def answer_ids(words: int, j: int) -> list[int]:
            return proc.text_ids(f"<reasoning>{common.filler(words, j + 5)}</reasoning>\n<score>{j % 5 + 1}</score>") + [im_end]

        words = common.fit_words(lambda w: len(proc.prompt_ids(ChatRequest(text(w, 0), images[0]), wl.visual_tokens)),
                                 wl.prompt_tokens)
        answer_words = common.fit_words(lambda w: len(answer_ids(w, 0)), self.args.answer_tokens, start=1)
        jitter = [0, 3, -3, 6, -6]
        requests = [ChatRequest(text(max(1, words + jitter[j % 5]), j), images[j], image_key=common.image_key(images[j]))
                    for j in range(n)]
        tails = [answer_ids(max(1, answer_words + jitter[j % 5] // 3), j) for j in range(n)]
        batch = proc(requests, tails=tails)
        labels = torch.full_like(batch["input_ids"], -100)
        for row, tail in enumerate(tails):
            labels[row, -len(tail):] = torch.tensor(tail)
        batch = {k: v.to(dev.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(dev.dtype)
        with torch.no_grad():
            feats = self.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"], return_dict=True).pooler_output
        keep = max(len(t) for t in tails) + 1
        return {
            "inputs": batch, "labels": labels.to(dev.device), "features": tuple(f.detach() for f in feats),
            "keep": keep,
            "prompt_tokens": float(batch["attention_mask"].sum(1).float().mean()) - sum(map(len, tails)) / n,
            "answer_tokens": sum(map(len, tails)) / n,
        }

    def kwargs(self, variant: str, data: dict[str, Any]) -> dict[str, Any]:
        """Model kwargs of one step of `variant` (a fresh `mm_encoder_outputs` dict each time)."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling as wrap

        inputs, labels = dict(data["inputs"], use_cache=False), data["labels"]
        if variant == "pixels":
            return dict(inputs, labels=labels)
        text = {k: v for k, v in inputs.items() if k != "pixel_values"}
        if variant == "pixels_nograd_vision":
            with torch.no_grad():
                feats = self.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"],
                                                      return_dict=True).pooler_output
            return dict(text, mm_encoder_outputs={"image": wrap(pooler_output=feats)}, labels=labels)
        out = dict(text, mm_encoder_outputs={"image": wrap(pooler_output=data["features"])}, labels=labels)
        if variant == "cached_answer_logits":
            # Logit t predicts token t+1; the kept window starts one before the earliest answer token.
            out.update(logits_to_keep=data["keep"], labels=labels[:, -data["keep"]:])
        return out

    def configure(self, variant: str, checkpointing: bool) -> None:
        # transformers 5.23's activation_checkpointing_enable() itself calls
        # enable_input_require_grads() (every model whose main input is input_ids), and that call
        # overwrites the list of earlier hooks instead of removing them: a second enable leaks the
        # first hooks for good. So hooks are removed before and after, and set only where meant.
        self.model.disable_input_require_grads()
        if checkpointing:
            self.model.activation_checkpointing_enable()
        else:
            self.model.activation_checkpointing_disable()
        self.model.disable_input_require_grads()
        if variant == "pixels" and checkpointing:
            self.model.enable_input_require_grads()  # as TRL's SFTTrainer does for PEFT + checkpointing

    # -- parity ------------------------------------------------------------------------------

    def grads(self, variant: str, checkpointing: bool, data: dict[str, Any]) -> tuple[float, Any]:
        import torch

        self.configure(variant, checkpointing)
        for p in self.lora_params:
            p.grad = None
        loss = self.pm(**self.kwargs(variant, data)).loss
        loss.backward()
        g = torch.cat([p.grad.float().flatten() for p in self.lora_params])
        for p in self.lora_params:
            p.grad = None
        return float(loss.detach()), g

    def parity(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        tol = TOLERANCE[str(self.dev.dtype).removeprefix("torch.")]
        ref_loss, ref = self.grads("pixels", False, data)
        ref_norm = float(ref.norm())
        out = []
        for variant in self.args.variants:
            for ckpt in self.checkpointing:
                loss, g = self.grads(variant, ckpt, data)
                d_loss, d_grad = abs(loss - ref_loss), float((g - ref).norm()) / ref_norm
                ok = d_loss <= tol["loss"] and d_grad <= tol["grad_rel"]
                out.append({"variant": variant, "checkpointing": ckpt, "loss": loss, "loss_diff": d_loss,
                            "grad_rel_diff": d_grad, "ok": ok})
                log(f"[{self.size}] parity {variant} ckpt={int(ckpt)}: |dloss| {d_loss:.2e}, |dgrad|/|grad| {d_grad:.2e}"
                    + ("" if ok else "  OUT OF TOLERANCE"))
                del g
        del ref
        self.dev.free()
        return out

    # -- timing ------------------------------------------------------------------------------

    @property
    def checkpointing(self) -> list[bool]:
        return [c == "on" for c in self.args.checkpointing]

    def floor(self, data: dict[str, Any], n: int):
        f = common.new_floor(self.ceilings)
        flops = 2 * common.prefill_flops(self.model.config, data["prompt_tokens"] + data["answer_tokens"],
                                         head_positions=data["answer_tokens"])
        f.phase(n * flops, 0)
        return f

    def step_row(self, variant: str, ckpt: bool, n: int, data: dict[str, Any]) -> dict[str, Any]:
        import torch

        row: dict[str, Any] = {"size": self.size, "workload": self.wl.name, "variant": variant,
                               "checkpointing": ckpt, "batch": n, "prompt_tokens": round(data["prompt_tokens"], 1),
                               "answer_tokens": round(data["answer_tokens"], 1), "visual_tokens": self.wl.visual_tokens}
        self.configure(variant, ckpt)
        opt = torch.optim.AdamW(self.lora_params, lr=1e-6)
        losses = []

        def step():
            loss = self.pm(**self.kwargs(variant, data)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))

        self.vision_backward_calls = 0
        self.dev.reset_peak()
        repeats = min(self.args.repeats, 2) if variant.startswith("pixels") and not self.args.tiny else self.args.repeats
        times = None
        try:
            times = common.timed(self.dev, step, repeats)
        except Exception as exc:  # noqa: BLE001 - an OOM is a result too: record it, go on
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            log(f"[{self.size}] {variant} ckpt={int(ckpt)} bs={n}: {row['error']}")
            if not common.is_oom(exc):
                traceback.print_exc()
        if times is None:  # outside the except block: the traceback no longer holds the graph
            opt.zero_grad(set_to_none=True)
            self.dev.free()
            return row
        t = common.median(times)
        f = self.floor(data, n)
        row.update(seconds_median=round(t, 4), seconds_all=[round(x, 4) for x in times],
                   samples_per_s=round(n / t, 4), peak_mem_gib=self.dev.peak_gib(), loss=round(losses[-1], 4),
                   vision_backward=self.vision_backward_calls > 0,
                   floor_samples_per_s=round(n / f.seconds, 3), pct_of_floor=round(100 * f.seconds / t, 2),
                   achieved_tflops=round(f.flops / t / 1e12, 4),
                   hours_2_epochs_dfj_meta=round(PAPER_SAMPLES * t / n / 3600, 2))
        log(f"[{self.size}] {variant} ckpt={int(ckpt)} bs={n}: {row['samples_per_s']:.3f} samples/s, peak {row['peak_mem_gib']} GiB")
        opt.zero_grad(set_to_none=True)
        self.dev.free()
        return row

    def vision_row(self, data: dict[str, Any], n: int) -> dict[str, Any]:
        """Encoding the images once (what `cached` needs beforehand), images/s."""
        import torch

        inputs = data["inputs"]

        def encode():
            with torch.no_grad():
                self.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])

        self.model.eval()
        t = common.median(common.timed(self.dev, encode, self.args.repeats))
        self.model.train()
        f = common.new_floor(self.ceilings)
        f.phase(n * common.vision_flops(self.model.config, self.wl.patches), 0)
        return {"size": self.size, "workload": self.wl.name, "variant": "vision_encode_once", "batch": n,
                "unit": "images", "samples_per_s": round(n / t, 3), "seconds_median": round(t, 4),
                "floor_samples_per_s": round(n / f.seconds, 3), "pct_of_floor": round(100 * f.seconds / t, 2)}

    def run(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        sizes = self.args.batch_sizes
        full = self.args.tiny or self.args.full_grid
        data = self.make_batch(max(sizes))
        log(f"[{self.size}/{self.wl.name}] prompt {data['prompt_tokens']:.0f} + answer {data['answer_tokens']:.0f} tokens, "
            f"{self.trainable / 1e6:.1f}M adapter parameters")
        parity = self.parity(self.subset(data, min(2, min(sizes))))
        rows = [self.vision_row(self.subset(data, sizes[0]), sizes[0])]
        for n in sizes:
            part = self.subset(data, n)
            for ckpt in self.checkpointing:
                for variant in self.args.variants:
                    if not full and variant.startswith("pixels") and (n != sizes[0] or not ckpt):
                        continue
                    rows.append(self.step_row(variant, ckpt, n, part))
                    self.saved(rows)
        for row in rows:
            base = next((r for r in rows if r.get("variant") == "pixels" and r.get("checkpointing")
                         and r["batch"] == row["batch"] and "samples_per_s" in r), None)
            base = base or next((r for r in rows if r.get("variant") == "pixels" and r.get("checkpointing")
                                 and "samples_per_s" in r), None)
            if base and "samples_per_s" in row and row["variant"] != "vision_encode_once":
                row["ratio_to_baseline"] = round(row["samples_per_s"] / base["samples_per_s"], 2)
        return rows, parity

    @staticmethod
    def subset(data: dict[str, Any], n: int) -> dict[str, Any]:
        """The first `n` rows of a batch (pixel rows follow the images' patch counts)."""
        inputs = data["inputs"]
        patches = [int(g.prod()) for g in inputs["image_grid_thw"]]
        sub = {k: v[:n] for k, v in inputs.items() if k != "pixel_values"}
        sub["pixel_values"] = inputs["pixel_values"][: sum(patches[:n])]
        # Trim left padding that only the dropped rows needed.
        width = int(sub["attention_mask"].sum(1).max())
        sub = {k: (v[:, -width:] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v) for k, v in sub.items()}
        labels = data["labels"][:n, -width:]
        answer = float((labels != -100).sum()) / n
        return dict(data, inputs=sub, labels=labels, features=data["features"][:n],
                    keep=min(data["keep"], width), answer_tokens=answer,
                    prompt_tokens=float(sub["attention_mask"].sum(1).float().mean()) - answer)


COLUMNS = [
    ("size", "size", ""), ("variant", "variant", ""), ("checkpointing", "ckpt", ""), ("batch", "batch", ""),
    ("samples_per_s", "samples/s", ".4g"), ("ratio_to_baseline", "x base", ".3g"), ("pct_of_floor", "% floor", ".3g"),
    ("peak_mem_gib", "peak GiB", ".4g"), ("vision_backward", "vis bwd", ""),
    ("hours_2_epochs_dfj_meta", "h/2 ep", ".3g"), ("error", "error", ""),
]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.env_threads(args.tiny)
    dev = Device(args.device)
    result = common.header("train_throughput", dev, args)
    result["tolerance"] = TOLERANCE[result["dtype"]]
    result["ceilings"] = common.measure_ceilings(dev)
    result["parity"] = []
    log(f"{result['card']}: {result['ceilings']}")
    path = common.results_path(args.out, "train_throughput", result)
    with tempfile.TemporaryDirectory() as tmp:
        processor = common.build_processor(tmp)
        for size in args.sizes:
            try:
                bench = TrainBench(args, dev, size, processor, result["ceilings"],
                                   lambda rows: common.save(dict(result, runs=result["runs"] + rows), path))
                rows, parity = bench.run()
                result["runs"].extend(rows)
                result["parity"].extend(dict(p, size=size) for p in parity)
                result.setdefault("adapter_parameters", {})[size] = bench.trainable
                del bench
            except Exception as exc:  # noqa: BLE001 - recorded in the results, the run goes on
                result["runs"].append({"size": size, "variant": "setup", "error": f"{type(exc).__name__}: {exc}"[:400]})
                traceback.print_exc()
            dev.free()
            common.save(result, path)
    parity_ok = bool(result["parity"]) and all(p["ok"] for p in result["parity"])
    return common.finish(result, path, "LoRA training throughput", COLUMNS, parity_ok)


if __name__ == "__main__":
    sys.exit(main())
