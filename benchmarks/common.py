"""What the judge and training benchmarks share: model shapes, workloads, the processor, timing,
the hardware ceilings, FLOP counts, provenance and the results file.

Models are Qwen2.5-VL at the real 3B / 7B shapes with random weights (nothing is downloaded), so
the figures are cost, not quality. The tokenizer, chat template and image processor are the
project's tiny offline ones (`deepfakejudge.backends.tiny`): token ids differ from Qwen's but every
shape that costs time (visual tokens, prompt length, vocabulary, layers) is the real one.

FLOP counts (multiply-add = 2 FLOPs; biases, norms, rotary and softmax ignored):
  language model, per token: 2 * P_lin, P_lin = L * (2*d*d + 2*d*kv*hd + 3*d*ff)   (q,o; k,v; MLP)
  causal attention over a prompt of T tokens: 2 * L * T^2 * d   (QK^T and AV, half the square)
  one decode step at context c: 2 * P_lin + 4 * L * c * d;  LM head: 2 * d * V per position read
  vision tower, per image of P patches (hidden h, MLP width i, depth D, F full-attention blocks,
  windows of w patches): 2*P*(1176*h) (patch embed) + D * 2*P*(4h^2 + 3hi) (qkv, proj, MLP)
  + F * 4*P^2*h + (D-F) * 4*P*w*h (attention) + 2*(P/4)*(16h^2 + 4h*out) (2x2 merger)
The floor of a batch is the sum over its phases (vision, prefill, each decode step) of
max(FLOPs / measured matmul rate, bytes / measured copy bandwidth), the bytes being the weights
read once per phase plus, in decode, the KV cache read once per step.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# -- shapes ------------------------------------------------------------------------------------

_VISION_QWEN25 = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                  "fullatt_block_indexes": [7, 15, 23, 31]}
SIZES: dict[str, dict[str, Any]] = {
    # Real Qwen2.5-VL-3B-Instruct / 7B-Instruct shapes (config.json of the released checkpoints).
    "3B": {
        "text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                 "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                 "mrope_section": [16, 24, 24]},
        "vision": {**_VISION_QWEN25, "out_hidden_size": 2048},
    },
    "7B": {
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
                 "mrope_section": [16, 24, 24]},
        "vision": {**_VISION_QWEN25, "out_hidden_size": 3584},
    },
    # A CPU-sized model that keeps the real vocabulary (LM head cost) and the real workloads.
    "small": {
        "text": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                 "mrope_section": [8, 12, 12]},
        "vision": {"depth": 4, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4,
                   "fullatt_block_indexes": [3], "out_hidden_size": 256},
    },
    # The test fixture's shapes: runs in seconds on CPU. Vocabulary = the tiny tokenizer's.
    "tiny": {
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": None, "tie_word_embeddings": False,
                 "mrope_section": [2, 3, 3]},
        "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                   "fullatt_block_indexes": [1], "out_hidden_size": 64},
    },
}


@dataclass(frozen=True)
class Workload:
    """One square image of `side` pixels and a prompt of `prompt_tokens` tokens in all (visual
    tokens included, as the model sees it)."""

    name: str
    side: int
    prompt_tokens: int

    @property
    def patches(self) -> int:
        return (self.side // 14) ** 2

    @property
    def visual_tokens(self) -> int:
        return self.patches // 4


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """This machine in a line: the CPU's model and the cores this process may use."""
    return f"CPU {cpu_model()} ({len(os.sched_getaffinity(0))} cores)"


def cpu_header(name: str) -> dict[str, Any]:
    """The fields a CPU benchmark's result starts with (the GPU ones use `header`)."""
    return {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_1min_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def spawn_server(argv: list[str], port_file: Path) -> tuple[Any, str]:
    """Start a benchmark's stand-in server (`argv`, a process that writes its port to `port_file`
    once listening); return the process and its `/v1` URL. Bounded wait: 30 s."""
    import subprocess

    port_file.unlink(missing_ok=True)  # a file left by an earlier run names a dead port
    proc = subprocess.Popen(argv)
    deadline = time.time() + 30
    while not port_file.exists() or not port_file.read_text():
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/v1"


def save_result(result: dict[str, Any], out: str | Path, stem: str, quick: bool) -> Path:
    """Write a benchmark's JSON as `<stem>_[quick_]<machine>_<date>.json` under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = "-".join(x for x in "".join(c if c.isalnum() else "-" for c in result["machine"]).split("-") if x)[:48]
    path = out / f"{stem}_{'quick_' if quick else ''}{name}_{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return path


# The GPU anchor's workloads (docs/design.md, "Performance design"): 256 + 352 and 1,225 + 352 tokens.
WORKLOADS = {"A": Workload("A", 448, 608), "B": Workload("B", 980, 1577)}
# --tiny: same structure, a few visual tokens.
TINY_WORKLOADS = {"A": Workload("A", 56, 160), "B": Workload("B", 112, 224)}

# The released judges' training budget (docs/design.md): 4*28*28 .. 1280*28*28 pixels.
MIN_PIXELS, MAX_PIXELS = 3136, 1003520


# -- device ------------------------------------------------------------------------------------


class Device:
    """The device under test: cuda (bf16) when present, else cpu (fp32)."""

    def __init__(self, name: str = "auto"):
        import torch

        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        """Peak allocated device memory since `reset_peak` (None on CPU: no per-phase figure)."""
        if self.cuda:
            return round(self.torch.cuda.max_memory_allocated() / 2**30, 2)
        return None

    def card(self) -> str:
        if self.cuda:
            return self.torch.cuda.get_device_name(self.device)
        return f"CPU {cpu_model()} ({self.torch.get_num_threads()} threads)"

    def free(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def timed(dev: Device, fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`, device-synchronised, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    dev.sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        dev.sync()
        times.append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def measure_ceilings(dev: Device) -> dict[str, float]:
    """Matmul rate (bf16 on GPU, fp32 on CPU) and copy bandwidth (bytes read + written), each the
    median of repeated runs after a warm-up; the floors are computed against these."""
    torch = dev.torch
    n = 8192 if dev.cuda else 1024
    a = torch.randn(n, n, device=dev.device, dtype=dev.dtype)
    b = torch.randn(n, n, device=dev.device, dtype=dev.dtype)
    t = median(timed(dev, lambda: a @ b, 10 if dev.cuda else 5))
    flops = 2 * n**3 / t
    numel = (2**30 if dev.cuda else 2**25) // 2  # 1 GiB (GPU) / 64 MiB (CPU) of float16-sized items
    src = torch.empty(numel, device=dev.device, dtype=torch.float16).normal_()
    dst = torch.empty_like(src)
    t = median(timed(dev, lambda: dst.copy_(src), 10 if dev.cuda else 5))
    bandwidth = 2 * src.numel() * src.element_size() / t
    return {"matmul_tflops": round(flops / 1e12, 2), "copy_gbps": round(bandwidth / 1e9, 1)}


# -- model and processor -----------------------------------------------------------------------


def build_processor(workdir: str | Path):
    """The project's offline tokenizer, chat template and image processor (written once into
    `workdir` by `build_tiny_qwen25vl`, which also writes a tiny model: a few MB), at the training
    pixel budget."""
    from deepfakejudge.backends.processor import ImageTextProcessor
    from deepfakejudge.backends.tiny import build_tiny_qwen25vl

    path = build_tiny_qwen25vl(Path(workdir) / "tokenizer-source", seed=0)
    return ImageTextProcessor.from_pretrained(str(path), MIN_PIXELS, MAX_PIXELS)


def model_config(size: str, processor):
    from transformers import Qwen2_5_VLConfig

    spec = SIZES[size]
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = dict(spec["text"])
    mrope = text.pop("mrope_section")
    text["vocab_size"] = text["vocab_size"] or len(tok)
    text.update(
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
        max_position_embeddings=32768, rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = {**spec["vision"], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "window_size": 112, "tokens_per_second": 2, "in_channels": 3}
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=text["tie_word_embeddings"],
    )


def build_model(size: str, processor, dev: Device, seed: int = 0):
    """Random Qwen2.5-VL of `size`, initialised directly on the device (sdpa attention).

    LM-head rows of the stop tokens and of ids the tokenizer does not have are zeroed: random
    logits elsewhere are almost surely above zero, so greedy decoding writes real tokens and never
    stops early, and every generate path produces exactly the tokens it is asked for (the matmuls
    keep their full size). With tied embeddings this also zeroes those input embeddings, which
    changes no cost.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = model_config(size, processor)
    with torch.device(dev.device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dev.dtype, attn_implementation="sdpa")
    tok = processor.tokenizer
    dead = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[dead] = 0
        head[len(tok):] = 0
    return model.eval()


def image_key(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def noise_images(n: int, side: int, seed: int) -> list[Image.Image]:
    """`n` distinct RGB images, side x side: smooth random blobs plus noise (not pure noise, so that
    JPEG files of them have realistic sizes)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (max(2, side // 32), max(2, side // 32), 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BILINEAR), dtype=np.int16)
        noisy = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(noisy))
    return out


# Text the tiny tokenizer knows (its training corpus), so token density is realistic.
_TEXT = (
    "The lighting on the left cheek does not match the shadows behind the person. "
    "In the hands the photograph shows warped geometry, 3 of 5 annotators agreed. "
    "Text on the sign is garbled, which suggests the picture was generated. "
    "Edges around the hair look soft and the ears are not symmetric. "
    "The reflection in the eyes is consistent, so the photo is likely real. "
    "This region was edited: the texture of the wall repeats unnaturally."
)
_WORDS = tuple(_TEXT.split())


# Own short instructions with the project's placeholders and output contract: under the tiny
# tokenizer the default templates alone are ~600 tokens (they are ~270 under Qwen's), so the
# instruction is kept short and the candidate text brings the prompt to the workload's length.
POINTWISE_TEXT = (
    "Rate the explanation of this image from 1 to 5.\nTrue class: {ground_truth_label}\n"
    "Explanation:\n{candidate_response}\nAnswer as <reasoning>...</reasoning>\n<score>N</score>"
)
PAIRWISE_TEXT = (
    "Which explanation of this image is better?\nTrue class: {ground_truth_label}\n"
    "Response A:\n{response_a}\nResponse B:\n{response_b}\nAnswer as <answer>A</answer> or <answer>B</answer>"
)


def templates():
    """The benchmark's pointwise and pairwise templates."""
    from deepfakejudge.prompts import Template

    return Template("pointwise", POINTWISE_TEXT, "benchmark"), Template("pairwise", PAIRWISE_TEXT, "benchmark")


def explanation(words: int, offset: int = 0) -> str:
    """A candidate explanation in the detectors' format, `words` filler words of reasoning."""
    return f"<reasoning>{filler(words, offset)}</reasoning> <answer>fake</answer>"


def filler(n_words: int, offset: int = 0) -> str:
    return " ".join(_WORDS[(offset + i) % len(_WORDS)] for i in range(n_words))


def fit_words(count: Callable[[int], int], target: int, start: int = 8) -> int:
    """The number of filler words that brings `count(words)` (a token count, increasing in
    words) closest to `target` from below or at it."""
    words = start
    while count(words) < target:
        words *= 2
        if words > 100_000:
            raise ValueError(f"cannot reach {target} tokens")
    lo, hi = 0, words
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


# -- FLOPs and floors --------------------------------------------------------------------------


def _text(config):
    return config.text_config if hasattr(config, "text_config") else config


def llm_linear_params(config) -> int:
    t = _text(config)
    d, ff, L = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    kv = t.num_key_value_heads * (d // t.num_attention_heads)
    return L * (2 * d * d + 2 * d * kv + 3 * d * ff)


def head_params(config) -> int:
    t = _text(config)
    return t.hidden_size * t.vocab_size


def prefill_flops(config, tokens: float, head_positions: float = 1) -> float:
    t = _text(config)
    return (2 * llm_linear_params(config) * tokens + 2 * t.num_hidden_layers * tokens**2 * t.hidden_size
            + 2 * head_params(config) * head_positions)


def decode_step_flops(config, context: float) -> float:
    t = _text(config)
    return 2 * llm_linear_params(config) + 4 * t.num_hidden_layers * context * t.hidden_size + 2 * head_params(config)


def kv_bytes_per_token(config, bytes_per: int) -> int:
    t = _text(config)
    return 2 * t.num_hidden_layers * t.num_key_value_heads * (t.hidden_size // t.num_attention_heads) * bytes_per


def vision_params(config) -> int:
    v = config.vision_config
    h, i = v.hidden_size, v.intermediate_size
    return 1176 * h + v.depth * (4 * h * h + 3 * h * i) + 16 * h * h + 4 * h * v.out_hidden_size


def vision_flops(config, patches: int) -> float:
    v = config.vision_config
    h, i, depth = v.hidden_size, v.intermediate_size, v.depth
    full = len(v.fullatt_block_indexes)
    window = (v.window_size // v.patch_size) ** 2
    return (2 * patches * 1176 * h + depth * 2 * patches * (4 * h * h + 3 * h * i)
            + full * 4 * patches**2 * h + (depth - full) * 4 * patches * min(window, patches) * h
            + 2 * (patches / 4) * (16 * h * h + 4 * h * v.out_hidden_size))


@dataclass
class Floor:
    """Accumulates the phases of one batch: FLOPs and the bytes they must read."""

    flops_per_s: float
    bytes_per_s: float
    seconds: float = 0.0
    compute_seconds: float = 0.0
    flops: float = 0.0

    def phase(self, flops: float, bytes_read: float) -> None:
        c = flops / self.flops_per_s
        self.seconds += max(c, bytes_read / self.bytes_per_s)
        self.compute_seconds += c
        self.flops += flops


def new_floor(ceilings: dict[str, float]) -> Floor:
    return Floor(ceilings["matmul_tflops"] * 1e12, ceilings["copy_gbps"] * 1e9)


# -- provenance and output ---------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    import torch
    import transformers

    import deepfakejudge

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "deepfakejudge": deepfakejudge.__version__,
    }
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        out["peft"] = None
    return out


def header(name: str, dev: Device, args: Any) -> dict[str, Any]:
    return {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "card": dev.card(),
        "device": str(dev.device),
        "dtype": str(dev.dtype).removeprefix("torch."),
        "versions": versions(),
        "argv": sys.argv[1:],
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "ceilings": None,
        "runs": [],
    }


def results_path(out_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    card = "".join(c if c.isalnum() else "-" for c in result["card"]).strip("-")
    card = "-".join(p for p in card.split("-") if p)[:48]
    tag = "tiny" if result["settings"].get("tiny") else "-".join(result["settings"]["sizes"])
    return Path(out_dir) / f"{name}_{tag}_{card}_{result['date'][:10]}.json"


def save(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def finish(result: dict[str, Any], path: Path, title: str, columns: list[tuple[str, str, str]],
           parity_ok: bool) -> int:
    """Record the verdicts, save, print the table; the exit code of a benchmark script."""
    result["parity_all_ok"] = parity_ok
    result["errors"] = sum("error" in r for r in result["runs"])
    save(result, path)
    print(f"\n{title} on {result['card']} ({result['dtype']}), {result['versions']}")
    print(f"ceilings: {result['ceilings']}; parity all within {result['tolerance']}: {result['parity_all_ok']}")
    print_table(result["runs"], columns)
    print(f"saved {path}")
    # An out-of-memory configuration is a measurement, not a failure of the script.
    failed = [r for r in result["runs"] if "error" in r and "OutOfMemory" not in r["error"]]
    return 0 if not failed and parity_ok else 1


def fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec or ".3g")
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]], file=sys.stdout) -> None:
    """`columns`: (key, heading, format spec)."""
    cells = [[h for _, h, _ in columns]] + [[fmt(r.get(k), f) for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if n and i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))),
              file=file)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=file)


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def env_threads(tiny: bool) -> None:
    """OMP_NUM_THREADS when set; else one thread for --tiny (tiny shapes gain nothing from more,
    and on a shared machine spinning threads make timings erratic); else torch's default."""
    import torch

    n = os.environ.get("OMP_NUM_THREADS")
    if n:
        torch.set_num_threads(int(n))
    elif tiny:
        torch.set_num_threads(1)
