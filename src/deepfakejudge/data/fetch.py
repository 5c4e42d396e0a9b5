"""`dfj data fetch`: download the released DeepfakeJudge data (a gated Hugging Face dataset).

The token is huggingface_hub's own: $HF_TOKEN, else the login saved by `hf auth login`. Access
problems (terms not accepted, no token, no network, offline mode) are one `FetchError` line that
says what to do; nothing else is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, MissingExtra
from .splits import DATASET_ID, DATASET_URL, GROUPS, SPLITS, data_root, find_split


class FetchError(InputError):
    """The dataset could not be downloaded; the message says why and how to fix it."""


@dataclass(frozen=True)
class FetchResult:
    root: Path
    revision: str | None
    splits: dict[str, Path | None]  # every known split -> its data file, None when absent


def allow_patterns(names: tuple[str, ...] | list[str]) -> list[str] | None:
    """hub file patterns for the splits `names` (None: everything)."""
    if not names:
        return None
    patterns = ["README.md"]
    for name in names:
        name = name.strip("/")
        if name in GROUPS:
            expanded = GROUPS[name]
        elif name in SPLITS:
            expanded = (name,)
        else:
            raise FetchError(f"--split {name}: not a split of {DATASET_ID}; use one of {', '.join([*SPLITS, *GROUPS])}")
        for split in expanded:
            patterns += [f"{folder}/**" for folder in SPLITS[split]]
    return patterns


def fetch_dataset(out: str | Path | None = None, splits: tuple[str, ...] | list[str] = (),
                  revision: str | None = None) -> FetchResult:
    """Download the dataset (or only `splits`) into `out` (default: $DFJ_DATA or the default
    folder) and say which splits are now there."""
    patterns = allow_patterns(splits)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:
        raise MissingExtra("dfj data fetch needs huggingface_hub; install it with: pip install 'deepfakejudge[fetch]'") from exc
    root = data_root(out)
    root.mkdir(parents=True, exist_ok=True)
    access = (f"accept the dataset's terms at {DATASET_URL} with your account, then log in with `hf auth login` "
              "or set HF_TOKEN")
    try:
        snapshot_download(DATASET_ID, repo_type="dataset", local_dir=root, revision=revision, allow_patterns=patterns)
    except GatedRepoError as exc:
        raise FetchError(f"{DATASET_ID} is gated and this account has no access yet: {access}") from exc
    except RevisionNotFoundError as exc:
        raise FetchError(f"--revision {revision}: no such revision of {DATASET_ID}") from exc
    except RepositoryNotFoundError as exc:
        # The hub answers "not found" to anonymous requests for gated repositories too.
        raise FetchError(f"{DATASET_ID}: not found or not visible without a token: {access}") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise FetchError(f"cannot download {DATASET_ID}: offline (no network, or HF_HUB_OFFLINE=1) and no complete "
                         f"copy in {root}; connect and rerun, or copy the dataset folder there") from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise FetchError(f"{DATASET_ID}: the hub refused the token (HTTP {status}): {access}") from exc
        raise FetchError(f"cannot download {DATASET_ID}: {str(exc).splitlines()[0]}") from exc
    return FetchResult(root, revision, {name: find_split(name, root) for name in SPLITS})
