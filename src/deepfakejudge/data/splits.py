"""The released DeepfakeJudge data by split name, under one local folder.

`dfj data fetch` downloads the dataset (MBZUAI/DeepfakeJudge-Dataset on the Hugging Face hub) into
a folder; every command that reads data then accepts a split name (`dfj-meta/pointwise/test`) as
well as a path. Names are resolved under, in order: an explicit root (`--data-root`), the
environment variable `DFJ_DATA`, and the default fetch folder
(`$XDG_CACHE_HOME/deepfakejudge/DeepfakeJudge-Dataset`, `~/.cache` by default).

Assumed layout (the dataset card's; each split folder holds `data.jsonl` and `images/`, image
paths relative to the split folder):

    dfj-bench/dfj-detect/                 DFJ-Detect (2,000 images)
    dfj-bench/dfj-reason/                 DFJ-Reason (924 annotated images)
    dfj-meta/dfj-meta-pointwise/{train,test}/
    dfj-meta/dfj-meta-pairwise/{train,test}/
    dfj-meta-human/{pointwise,pairwise}/  DFJ-Meta-Human

The resolver is tolerant because the released folder names have varied: `dfj-meta/pointwise/test`
is looked up as `dfj-meta/dfj-meta-pointwise/test` and as `dfj-meta/pointwise/test`, and a split
may be a folder with `data.jsonl`, a folder with a single `.jsonl` file, or a `<name>.jsonl` file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, UsageError
from ..runtime import user_cache_dir

DATASET_ID = "MBZUAI/DeepfakeJudge-Dataset"
DATASET_URL = f"https://huggingface.co/datasets/{DATASET_ID}"

# Split name -> folders (relative to the root) tried in order.
SPLITS: dict[str, tuple[str, ...]] = {
    "dfj-bench/dfj-detect": ("dfj-bench/dfj-detect",),
    "dfj-bench/dfj-reason": ("dfj-bench/dfj-reason",),
    **{
        f"dfj-meta/{kind}/{part}": (f"dfj-meta/dfj-meta-{kind}/{part}", f"dfj-meta/{kind}/{part}")
        for kind in ("pointwise", "pairwise")
        for part in ("train", "test")
    },
    "dfj-meta-human/pointwise": ("dfj-meta-human/pointwise", "dfj-meta-human/dfj-meta-human-pointwise"),
    "dfj-meta-human/pairwise": ("dfj-meta-human/pairwise", "dfj-meta-human/dfj-meta-human-pairwise"),
}
# A name that stands for several splits: the error lists them.
GROUPS: dict[str, tuple[str, ...]] = {
    "dfj-meta-human": ("dfj-meta-human/pointwise", "dfj-meta-human/pairwise"),
    "dfj-bench": ("dfj-bench/dfj-detect", "dfj-bench/dfj-reason"),
    "dfj-meta": tuple(n for n in SPLITS if n.startswith("dfj-meta/")),
}


def default_data_root() -> Path:
    return user_cache_dir() / "DeepfakeJudge-Dataset"


def data_root(root: str | Path | None = None) -> Path:
    """`root`, else $DFJ_DATA, else the default fetch folder."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("DFJ_DATA"):
        return Path(os.environ["DFJ_DATA"]).expanduser()
    return default_data_root()


def is_split_name(value: str | Path) -> bool:
    name = str(value).strip("/")
    return name in SPLITS or name in GROUPS


def split_file(folder: Path) -> Path | None:
    """The JSONL of a split at `folder`: `folder/data.jsonl`, the only `.jsonl` in `folder`, or
    `folder.jsonl`; None when there is none."""
    if folder.is_dir():
        if (folder / "data.jsonl").is_file():
            return folder / "data.jsonl"
        files = sorted(p for p in folder.glob("*.jsonl") if p.is_file())
        if len(files) == 1:
            return files[0]
        return None
    candidate = folder.with_name(folder.name + ".jsonl")
    return candidate if candidate.is_file() else None


def find_split(name: str, root: str | Path | None = None) -> Path | None:
    """The data file of split `name` under the root, or None when it is not there."""
    base = data_root(root)
    for relative in SPLITS[name.strip("/")]:
        found = split_file(base / relative)
        if found is not None:
            return found
    return None


def fetch_hint(names: list[str] | tuple[str, ...], root: str | Path | None = None) -> str:
    """What to run to get the splits `names`."""
    base = data_root(root)
    where = "" if root is None and not os.environ.get("DFJ_DATA") else f" --out {base}"
    splits = "".join(f" --split {n}" for n in names)
    return (f"fetch it with `dfj data fetch{where}{splits}` (gated: accept the terms at {DATASET_URL} and log in "
            "with `hf auth login` or set HF_TOKEN), or point --data-root / DFJ_DATA at a copy")


def resolve_split(name: str, root: str | Path | None = None) -> Path:
    """The data file of split `name`; a ValueError naming the folder and the fix when absent."""
    name = name.strip("/")
    if name in GROUPS:
        raise UsageError(f"--data {name}: names several splits; use one of {', '.join(GROUPS[name])}")
    found = find_split(name, root)
    if found is None:
        base = data_root(root)
        raise InputError(f"--data {name}: the split is not under {base} (looked for "
                         f"{' or '.join(str(base / r) for r in SPLITS[name])}); {fetch_hint([name], root)}")
    return found
