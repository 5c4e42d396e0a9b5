"""The artifact taxonomy and the rating rubric shown in the app, loaded from a YAML file.

The default file (`taxonomy.yaml` beside this module) is the project's; `--taxonomy PATH` swaps
in another of the same shape. Unknown keys, duplicate names and empty definitions are errors
that name the key and the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingExtra

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")


@dataclass(frozen=True)
class Category:
    name: str
    definition: str
    also_called: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    categories: tuple[Category, ...]
    rubric: tuple[tuple[int, str], ...]  # (score, description), 5 first
    path: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    def to_dict(self) -> dict[str, Any]:
        return {
            "categories": [
                {"name": c.name, "definition": c.definition, "also_called": list(c.also_called)}
                for c in self.categories
            ],
            "rubric": {str(k): v for k, v in self.rubric},
        }


def _fail(path: Path, key: str, message: str) -> ValueError:
    return InputError(f"--taxonomy {path}: '{key}' {message}; see {DEFAULT_TAXONOMY} for the expected shape")


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    try:
        import yaml
    except ImportError:
        raise MissingExtra("dfj annotate needs PyYAML: pip install 'deepfakejudge[annotate]'") from None
    path = Path(path) if path is not None else DEFAULT_TAXONOMY
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--taxonomy {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise InputError(f"--taxonomy {path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise _fail(path, "<file>", "must be a mapping with 'categories' and 'rubric'")
    unknown = set(doc) - {"version", "categories", "rubric"}
    if unknown:
        raise _fail(path, sorted(unknown)[0], "is not a known key (version, categories, rubric)")
    raw = doc.get("categories")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, "categories", "must be a non-empty list")
    categories, seen = [], set()
    for i, item in enumerate(raw):
        key = f"categories[{i}]"
        if not isinstance(item, dict):
            raise _fail(path, key, "must be a mapping with name and definition")
        extra = set(item) - {"name", "definition", "also_called"}
        if extra:
            raise _fail(path, f"{key}.{sorted(extra)[0]}", "is not a known key (name, definition, also_called)")
        name, definition = item.get("name"), item.get("definition")
        if not isinstance(name, str) or not name.strip():
            raise _fail(path, f"{key}.name", "must be a non-empty string")
        if name in seen:
            raise _fail(path, f"{key}.name", f"repeats the category {name!r}")
        if not isinstance(definition, str) or not definition.strip():
            raise _fail(path, f"{key}.definition", "must be a one-line description")
        also = item.get("also_called") or []
        if not isinstance(also, list) or not all(isinstance(a, str) for a in also):
            raise _fail(path, f"{key}.also_called", "must be a list of strings")
        seen.add(name)
        categories.append(Category(name.strip(), " ".join(definition.split()), tuple(also)))
    rubric_raw = doc.get("rubric")
    if not isinstance(rubric_raw, dict) or sorted(int(k) for k in rubric_raw if str(k).isdigit()) != [1, 2, 3, 4, 5]:
        raise _fail(path, "rubric", "must map each score 1..5 to its description")
    rubric = tuple((k, str(rubric_raw.get(k, rubric_raw.get(str(k))))) for k in (5, 4, 3, 2, 1))
    return Taxonomy(tuple(categories), rubric, str(path))
