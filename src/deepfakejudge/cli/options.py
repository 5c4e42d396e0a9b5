"""Options shared by every command that calls a model, and the one place that builds a backend
and a progress bar from them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ModelOption:
    """One option of a model: its flag without the prefix, its argparse settings, its default and
    help. `{p}` in the help stands for the prefix, so that it names the right sibling flags."""

    name: str
    group: str  # "model", "remote" or "cache"
    default: Any
    help: str
    default_help: str | None = None  # how --help states the default; None: it is in `help`
    kwargs: dict[str, Any] = field(default_factory=dict)


MODEL_OPTIONS: dict[str, ModelOption] = {o.name: o for o in (
    ModelOption("model", "model", None, "local checkpoint folder, Hugging Face model id, or the name a server knows "
                "the model by", kwargs={"metavar": "MODEL"}),
    ModelOption("backend", "model", "hf", "how the model is run", "hf"),  # choices: BACKENDS when registered
    ModelOption("adapter", "model", None, "LoRA adapter folder to apply on top of --{p}model"),
    ModelOption("device", "model", "auto", "auto | cpu | cuda | cuda:N", "auto"),
    ModelOption("dtype", "model", "auto", "auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16", "auto"),
    # Default None: the budget a trained adapter recorded wins over the built-in one (see pixel_budget).
    ModelOption("min-pixels", "model", None, "image pixel budget, lower end",
                f"{MIN_PIXELS}; dfj judge: a trained adapter's own budget", {"type": int}),
    ModelOption("max-pixels", "model", None, "image pixel budget, upper end",
                f"{MAX_PIXELS}; dfj judge: a trained adapter's own budget", {"type": int}),
    ModelOption("max-prompt-tokens", "model", None,
                "refuse prompts longer than this many tokens (text plus image) before any model call, as an error row "
                "naming the field", "the model's context length; remote: 128000", {"type": int}),
    ModelOption("vision-cache-mb", "model", 1024,
                "keep visual embeddings of up to this many MB so each image is encoded once (hf backend; 0: off)",
                "1024", {"type": int}),
    ModelOption("decoding", "model", "checkpoint",
                "checkpoint: the model's generation_config.json, as model.generate uses it and the released judges "
                "were run (Qwen: top_k=1, repetition_penalty=1.05); greedy: plain argmax, no repetition penalty (hf "
                "backend; a remote server applies its own defaults)", "checkpoint", {"choices": DECODINGS}),
    ModelOption("base-url", "remote", None,
                "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; repeat it for several servers of the same "
                "model: each request goes to the least-loaded one that is up (see docs/remote-and-serve.md)",
                kwargs={"action": "append", "metavar": "URL"}),
    ModelOption("api-key-env", "remote", "OPENAI_API_KEY",
                "environment variable holding the API key (the key itself is never recorded)", "OPENAI_API_KEY",
                {"metavar": "NAME"}),
    ModelOption("concurrency", "remote", 8, "requests in flight at once", "8", {"type": int}),
    ModelOption("timeout", "remote", 120.0, "seconds per HTTP request", "120", {"type": float}),
    ModelOption("max-retries", "remote", 5,
                "retries on 429/5xx/timeouts/dropped connections, exponential backoff with jitter", "5", {"type": int}),
    ModelOption("top-logprobs", "remote", 20,
                "alternatives asked for when reading choice probabilities (OpenAI's maximum is 20; vLLM allows up to "
                "its --max-logprobs)", "20", {"type": int}),
    ModelOption("prefill", "remote", "auto",
                "continue a prefilled assistant message (needed by --{p}mode score-only); auto: on for vLLM, SGLang "
                "and dfj serve, detected from /v1/models", "auto", {"choices": ("auto", "on", "off")}),
    ModelOption("image-transport", "remote", "png",
                "png: images resized here to the pixel budget, sent as lossless PNG, exact with any server; original: "
                "the files' own bytes (~5x less data for JPEG), exact only when the server resizes with the same "
                "--{p}min-pixels/--{p}max-pixels (see docs/remote-and-serve.md)", "png",
                {"choices": ("png", "original")}),
    ModelOption("image-workers", "remote", None,
                "processes preparing images, each image once per run (0: in this process)", "one per core",
                {"type": int, "metavar": "N"}),
    ModelOption("cache", "cache", None,
                "SQLite request cache: a rerun costs no model call for what it holds",
                "for --{p}backend openai: $DFJ_CACHE or ~/.cache/deepfakejudge/requests.sqlite; local backends: off "
                "unless given", {"metavar": "PATH"}),
    ModelOption("no-cache", "cache", False, "do not read or write the request cache", kwargs={"action": "store_true"}),
    ModelOption("reasks", "cache", 0, "ask again, sampled, at most N times when an output has no parsable answer",
                kwargs={"type": int}),
)}

GROUP_TITLES = {"model": "model", "remote": "remote model (--{p}backend openai)", "cache": "request cache and re-asks"}
REMOTE_OPTIONS = tuple(n for n, o in MODEL_OPTIONS.items() if o.group != "model")


def add_model_options(p: argparse.ArgumentParser, prefix: str = "", *, names: Iterable[str] | None = None,
                      required: bool = True, aliases: dict[str, str] | None = None, fallback: Iterable[str] = (),
                      reasks: int = 0, title: str | None = None) -> dict[str, argparse._ArgumentGroup]:
    """Register the options of one model as `--{prefix}model`, `--{prefix}backend`, `--{prefix}base-url`,
    ...; `backend_from_args(args, prefix)` builds the backend from them. `names`: only these options
    (default: all); `required`: --{prefix}model must be given; `aliases`: another flag for an option,
    kept for existing command lines ({"model": "--judge"}), listed first; `fallback`: options that,
    left out, take the unprefixed option of the same name (dfj bootstrap's roles share --base-url);
    `reasks`: the command's default number of re-asks; `title`: the groups' title prefix. Returns the
    argument groups made, by kind ("model", "remote", "cache")."""
    aliases, fallback = aliases or {}, set(fallback)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in (MODEL_OPTIONS if names is None else names):
        o = MODEL_OPTIONS[name]
        if o.group not in groups:
            groups[o.group] = p.add_argument_group((title or "") + GROUP_TITLES[o.group].replace("{p}", prefix))
        default = reasks if name == "reasks" else o.default
        stated = str(reasks) if name == "reasks" else o.default_help
        help_text = o.help.replace("{p}", prefix)
        if name in fallback:
            help_text += f" (default: --{name})"
            default = None
        elif stated is not None:
            help_text += f" (default: {stated.replace('{p}', prefix)})"
        flags = [f"--{prefix}{name}"]
        if name in aliases:
            flags.insert(0, aliases[name])
        kwargs = dict(o.kwargs)
        if name == "backend":
            kwargs["choices"] = sorted(BACKENDS)  # as registered now (tests add a scripted backend)
        if name == "model":
            kwargs["required"] = required
        if "choices" not in kwargs and kwargs.get("action") != "store_true":
            kwargs.setdefault("metavar", name.upper().replace("-", "_"))  # the same with any prefix
        if kwargs.get("action") != "store_true" or name in fallback:
            kwargs["default"] = default
        groups[o.group].add_argument(*flags, dest=model_dest(prefix, name), help=help_text, **kwargs)
    return groups


def model_dest(prefix: str, name: str) -> str:
    """The attribute `--{prefix}{name}` is parsed into."""
    return (prefix + name).replace("-", "_")


def model_option(args: argparse.Namespace, name: str, prefix: str = "") -> Any:
    """The value of `--{prefix}{name}`. Not given (None, or not an option of the command): the
    unprefixed option of that name (shared by roles), else the option's default."""
    for p in dict.fromkeys((prefix, "")):
        value = getattr(args, model_dest(p, name), None)
        if value is not None:
            return value
    return MODEL_OPTIONS[name].default


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
    if e["restarts_seen"] or e["chunks_redelivered"]:
        line += f"; restarts seen {e['restarts_seen']}, pools delivered twice (written once) {e['chunks_redelivered']}"
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


def backend_from_args(args: argparse.Namespace, prefix: str = "") -> Backend:
    """The backend the `--{prefix}...` options name (see add_model_options), behind the request
    cache when one is in use."""
    def opt(name: str) -> Any:
        return model_option(args, name, prefix)

    options = LoadOptions(
        model=opt("model"),
        adapter=opt("adapter"),
        device=opt("device"),
        dtype=opt("dtype"),
        budget=pixel_budget(args, prefix=prefix),
        vision_cache_mb=opt("vision-cache-mb"),
        max_prompt_tokens=opt("max-prompt-tokens"),
        decoding=opt("decoding"),
        remote=RemoteOptions(
            base_url=base_urls(opt("base-url")),
            api_key_env=opt("api-key-env"),
            concurrency=opt("concurrency"),
            timeout=opt("timeout"),
            max_retries=opt("max-retries"),
            top_logprobs=opt("top-logprobs"),
            prefill=opt("prefill"),
            image_transport=opt("image-transport"),
            image_workers=opt("image-workers"),
        ),
    )
    path = cache_path(args, prefix)
    cache = RequestCache(path) if path is not None else None  # a bad --cache fails before a model loads
    try:
        backend = load_backend(opt("backend"), options)
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


def cache_path(args: argparse.Namespace, prefix: str = "") -> Path | None:
    """The request cache to use: --cache, else the default one for remote backends; None with --no-cache."""
    if model_option(args, "no-cache", prefix):
        return None
    if model_option(args, "cache", prefix) is not None:
        return Path(model_option(args, "cache", prefix))
    return default_cache_path() if model_option(args, "backend", prefix) == "openai" else None


def pixel_budget(args: argparse.Namespace, trained: PixelBudget | None = None, prefix: str = "") -> PixelBudget:
    """--min-pixels/--max-pixels when given, else a trained judge's recorded budget, else the default."""
    fallback = trained or PixelBudget()
    low, high = model_option(args, "min-pixels", prefix), model_option(args, "max-pixels", prefix)
    return PixelBudget(fallback.min_pixels if low is None else low, fallback.max_pixels if high is None else high)


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
