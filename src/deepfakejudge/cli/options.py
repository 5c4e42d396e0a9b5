"""Options shared by every command that calls a model, and the one place that builds a backend
and a progress bar from them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..backends import BACKENDS, Backend, LoadOptions, PixelBudget, RemoteOptions, load_backend
from ..backends.base import DECODINGS, MAX_PIXELS, MIN_PIXELS
from ..backends.cache import CachedBackend, RequestCache, default_cache_path
from ..data.images import MAX_IMAGE_PIXELS
from ..errors import UsageError


TEMPLATE_HELP = ("judge prompt: a template FILE with the released placeholders (read in text mode: CRLF -> LF), "
                 "'official' (the authors' prompt of the released judges, fetched and checked; see "
                 "docs/paper-protocol.md) or 'default' (the project's own rubric). Default: 'official' when the "
                 "model is a released DFJ judge (MBZUAI/Qwen-2.5-VL-Instruct-*-DFJ, or an adapter or export of "
                 "one), else 'default'")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="local checkpoint folder or Hugging Face model id")
    g.add_argument("--backend", default="hf", choices=sorted(BACKENDS), help="how the model is run (default: hf)")
    g.add_argument("--adapter", default=None, help="LoRA adapter folder to apply on top of --model")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    # Default None: the budget a trained --adapter recorded wins over the built-in one (see pixel_budget).
    g.add_argument("--min-pixels", type=int, default=None, help=f"image pixel budget, lower end (default: the adapter's training budget, else {MIN_PIXELS})")
    g.add_argument("--max-pixels", type=int, default=None, help=f"image pixel budget, upper end (default: the adapter's training budget, else {MAX_PIXELS})")
    g.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="refuse prompts longer than this many tokens (text plus image) before any model call, as an "
                        "error row naming the field (default: the model's context length; remote: 128000)")
    g.add_argument("--vision-cache-mb", type=int, default=1024,
                   help="keep visual embeddings of up to this many MB so each image is encoded once (hf backend; 0: off)")
    g.add_argument("--decoding", default="checkpoint", choices=DECODINGS,
                   help="checkpoint: the model's generation_config.json, as model.generate uses it and the released "
                        "judges were run (Qwen: top_k=1, repetition_penalty=1.05); greedy: plain argmax, no "
                        "repetition penalty (hf backend; a remote server applies its own defaults)")
    add_remote_options(p)


def add_remote_options(p: argparse.ArgumentParser, reasks: int = 0) -> None:
    """--backend openai settings, the request cache and re-asks: every model command gets them.
    `reasks`: the command's default number of re-asks."""
    r = p.add_argument_group("remote model (--backend openai)")
    r.add_argument("--base-url", action="append", default=None, metavar="URL",
                   help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; repeat it for several servers of "
                        "the same model: each request goes to the least-loaded one that is up (see "
                        "docs/remote-and-serve.md)")
    r.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="NAME",
                   help="environment variable holding the API key (default OPENAI_API_KEY; the key itself is never recorded)")
    r.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    r.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request (default 120)")
    r.add_argument("--max-retries", type=int, default=5,
                   help="retries on 429/5xx/timeouts/dropped connections, exponential backoff with jitter (default 5)")
    r.add_argument("--top-logprobs", type=int, default=20,
                   help="alternatives asked for when reading choice probabilities (default 20, OpenAI's maximum; "
                        "vLLM allows up to its --max-logprobs)")
    r.add_argument("--prefill", choices=("auto", "on", "off"), default="auto",
                   help="continue a prefilled assistant message (needed by --mode score-only); auto: on for vLLM, "
                        "SGLang and dfj serve, detected from /v1/models")
    r.add_argument("--image-transport", choices=("png", "original"), default="png",
                   help="png (default): images resized here to the pixel budget, sent as lossless PNG, exact with any "
                        "server; original: the files' own bytes (~5x less data for JPEG), exact only when the server "
                        "resizes with the same --min-pixels/--max-pixels (see docs/remote-and-serve.md)")
    r.add_argument("--image-workers", type=int, default=None, metavar="N",
                   help="processes preparing images, each image once per run (default: one per core; 0: in this process)")
    c = p.add_argument_group("request cache and re-asks")
    c.add_argument("--cache", default=None, metavar="PATH",
                   help="SQLite request cache: a rerun costs no model call for what it holds (default for --backend "
                        "openai: $DFJ_CACHE or ~/.cache/deepfakejudge/requests.sqlite; local backends: off unless given)")
    c.add_argument("--no-cache", action="store_true", help="do not read or write the request cache")
    c.add_argument("--reasks", type=int, default=reasks,
                   help=f"ask again, sampled, at most N times when an output has no parsable answer (default {reasks})")


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--data", required=True,
                   help="dataset: canonical or ms-swift JSONL, a split folder with data.jsonl, or a split name of the "
                        "released data (e.g. dfj-meta/pointwise/test; see dfj data fetch)")
    add_data_root_option(g)
    add_image_root_option(g)
    g.add_argument("--out", required=True, help="results JSONL (resumed if it exists; summary written beside it)")
    g.add_argument("--batch-size", type=int, default=8, help="items per model call (default 8)")
    g.add_argument("--limit", type=int, default=None, help="only the first N items of the data (smoke runs; a resumed run stops at the same N)")
    g.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming --out")
    g.add_argument("--retry-errors", action="store_true",
                   help="judge again the items whose model call failed before (out of memory, server errors); "
                        "rows of bad input stay as they are")
    g.add_argument("--allow-errors", action="store_true", help="exit 0 even when some rows could not be judged")
    g.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help="refuse larger images (decompression-bomb guard)")
    g.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """--engine and the Ray engine's settings (docs/scale-out.md)."""
    from ..engine import ENGINES

    g = p.add_argument_group("engine (docs/scale-out.md)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: one model in this process (default); ray: model replicas as Ray actors on a Ray "
                        "cluster, each reading its images from storage every node sees (needs deepfakejudge[ray])")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: the cluster to join, e.g. head-node:6379 (default: $RAY_ADDRESS, else a "
                        "local cluster started for this run)")
    g.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="--engine ray: model replicas (default: one per GPU for a model on GPU, else one per "
                        "--cpus-per-replica CPUs when given, else one)")
    g.add_argument("--gpus-per-replica", type=float, default=None, metavar="G",
                   help="--engine ray: GPUs per replica, fractions allowed (default: 1 for the hf backend when the "
                        "cluster has GPUs and --device is not cpu, else 0)")
    g.add_argument("--cpus-per-replica", type=float, default=None, metavar="C",
                   help="--engine ray: CPUs per replica (default: 1 with a GPU, else the largest node's CPUs)")


def engine_from_args(args: argparse.Namespace, work: Any, *, backend: str, device: str):
    """The engine --engine names, running `work` (engine.Work). `backend`/`device`: the model's,
    to tell whether a replica wants a GPU. Ray options without --engine ray are an error."""
    from ..engine import open_engine

    name = getattr(args, "engine", "local")
    ray_only = {"--ray-address": "ray_address", "--replicas": "replicas", "--gpus-per-replica": "gpus_per_replica",
                "--cpus-per-replica": "cpus_per_replica"}
    if name != "ray":
        given = [flag for flag, attr in ray_only.items() if getattr(args, attr, None) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only used with --engine ray (add --engine ray, or drop them)")
        return open_engine(name, work)
    from ..engine.ray_engine import RayOptions

    options = RayOptions(address=args.ray_address, replicas=args.replicas, gpus_per_replica=args.gpus_per_replica,
                         cpus_per_replica=args.cpus_per_replica, batch_size=args.batch_size,
                         wants_gpu=backend == "hf" and device != "cpu")
    return open_engine(name, work, options)


def engine_lines(summary: dict[str, Any]) -> list[str]:
    """The run's text-output line about the Ray engine (none for the local engine)."""
    e = summary.get("engine")
    if not e:
        return []
    per = ", ".join(f"#{k}: {v}" for k, v in e["items_per_replica"].items())
    line = f"ray: {e['replicas']} replicas at {e['address']}; items per replica {per}"
    if e["restarts_seen"] or e["chunks_moved"]:
        line += f"; restarts seen {e['restarts_seen']}, chunks moved to another replica {e['chunks_moved']}"
    return [line]


def add_image_root_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="also read images from under DIR (repeatable); by default images are read only from "
                        "inside the data file's folder (symlinks resolved), anything else is an error row")


def add_data_root_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder that split names are resolved under (default: $DFJ_DATA, else the folder "
                        "`dfj data fetch` downloads to)")


# Arguments that name a dataset, and so may be a split name of the released data.
DATA_ARGS = ("data", "gold", "pointwise_gold")


def expand_split_names(args: argparse.Namespace) -> None:
    """With --data-root, turn split names in the dataset arguments into their files under it
    (without it, `resolve_data_path` looks names up under $DFJ_DATA or the default folder)."""
    from ..data.reader import resolve_data_path
    from ..data.splits import is_split_name

    root = getattr(args, "data_root", None)
    if root is None:
        return
    for name in DATA_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and not Path(value).exists() and is_split_name(value):
            setattr(args, name, str(resolve_data_path(value, root)))


def backend_from_args(args: argparse.Namespace) -> Backend:
    options = LoadOptions(
        model=args.model,
        adapter=args.adapter,
        device=args.device,
        dtype=args.dtype,
        budget=pixel_budget(args),
        vision_cache_mb=args.vision_cache_mb,
        max_prompt_tokens=getattr(args, "max_prompt_tokens", None),
        decoding=getattr(args, "decoding", "checkpoint"),
        remote=RemoteOptions(
            base_url=base_urls(args.base_url),
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
            timeout=args.timeout,
            max_retries=args.max_retries,
            top_logprobs=args.top_logprobs,
            prefill=args.prefill,
            image_transport=getattr(args, "image_transport", "png"),
            image_workers=getattr(args, "image_workers", None),
        ),
    )
    path = cache_path(args)
    cache = RequestCache(path) if path is not None else None  # a bad --cache fails before a model loads
    try:
        backend = load_backend(args.backend, options)
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    return backend if cache is None else CachedBackend(backend, cache)


def base_urls(values: str | list[str] | None) -> str | tuple[str, ...] | None:
    """A repeatable --base-url as RemoteOptions takes it: one URL as a string (a single server),
    several as a tuple (a pool of replicas), none as None."""
    if values is None or isinstance(values, str):
        return values
    urls = [v for v in values if v]
    return None if not urls else urls[0] if len(urls) == 1 else tuple(urls)


def cache_path(args: argparse.Namespace) -> Path | None:
    """The request cache to use: --cache, else the default one for remote backends; None with --no-cache."""
    if args.no_cache:
        return None
    if args.cache is not None:
        return Path(args.cache)
    return default_cache_path() if args.backend == "openai" else None


def pixel_budget(args: argparse.Namespace, trained: PixelBudget | None = None) -> PixelBudget:
    """--min-pixels/--max-pixels when given, else a trained judge's recorded budget, else the default."""
    fallback = trained or PixelBudget()
    return PixelBudget(
        fallback.min_pixels if args.min_pixels is None else args.min_pixels,
        fallback.max_pixels if args.max_pixels is None else args.max_pixels,
    )


def progress(total: int, desc: str) -> tqdm:
    # stderr only: stdout is reserved for results (--json).
    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True, disable=None)


def replica_lines(backend: dict[str, Any] | None, role: str = "") -> list[str]:
    """A summary line of per-server counts when several servers (--base-url repeated) ran."""
    counts = (backend or {}).get("replicas")
    if not counts:
        return []
    parts = [f"{url}: {c['answered']} answered, {c['failed']} failed" + (f", out {c['taken_out']}x" if c["taken_out"]
             else "") for url, c in counts.items()]
    return [f"{role}servers: " + "; ".join(parts)]


def emit(summary: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print("\n".join(lines))
