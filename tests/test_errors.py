"""The CLI's error boundary: errors the user can act on (`errors.UsageError`, `InputError`,
`MissingExtra`) are one line and exit 2; any other exception, even a plain ValueError from deep in a
library, is a bug: traceback, exit 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import deepfakejudge.cli.data as data_cli
from deepfakejudge.cli import main
from deepfakejudge.errors import USER_ERRORS, InputError, MissingExtra, UsageError


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "r1", "image": "a.png", "label": "real"}) + "\n", encoding="utf-8")
    return path


def test_the_user_errors_are_what_library_callers_already_catch():
    from deepfakejudge.data.canonical import InputError as RowInputError
    from deepfakejudge.data.fetch import FetchError
    from deepfakejudge.prompts.official import OfficialPromptMissing
    from deepfakejudge.reason import Unavailable

    assert issubclass(UsageError, ValueError) and issubclass(InputError, ValueError)
    assert issubclass(MissingExtra, ImportError)
    assert Unavailable is MissingExtra  # the old name still works
    for cls in (RowInputError, FetchError, OfficialPromptMissing):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("error", [UsageError("--data x: no such file; pass a JSONL"),
                                   InputError("rows.jsonl: line 3: field 'label': 'maybe' is not a label"),
                                   MissingExtra("--png needs matplotlib: pip install 'deepfakejudge[plots]'")])
def test_a_user_error_is_one_line_and_exit_2(rows, monkeypatch, capsys, error):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(data_cli, "load_records", refuse)
    assert main(["data", "stats", str(rows)]) == 2
    err = capsys.readouterr().err
    assert err == f"dfj data: error: {error}\n"


@pytest.mark.parametrize("bug", [ValueError("operands could not be broadcast together"),
                                 ZeroDivisionError("division by zero"),
                                 ImportError("cannot import name 'x' from partially initialized module")])
def test_any_other_exception_is_not_reported_as_a_user_error(rows, monkeypatch, capsys, bug):
    assert not isinstance(bug, USER_ERRORS)

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(data_cli, "load_records", broken)
    with pytest.raises(type(bug)) as caught:
        main(["data", "stats", str(rows)])
    assert caught.value is bug
    assert "error:" not in capsys.readouterr().err


def test_a_bug_in_a_command_gives_a_traceback_and_exit_1(rows):
    # What a user sees from the installed `dfj`: the entry point is `sys.exit(main())`.
    code = (
        "import sys\n"
        "import deepfakejudge.cli.data as data_cli\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('operands could not be broadcast together')\n"
        "data_cli.load_records = broken\n"
        "from deepfakejudge.cli import main\n"
        f"sys.exit(main(['data', 'stats', {str(rows)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert "in broken" in proc.stderr
    assert proc.stderr.rstrip().endswith("ValueError: operands could not be broadcast together")
    assert "dfj data: error:" not in proc.stderr


def test_real_user_errors_still_exit_2(tmp_path, rows, capsys):
    missing = tmp_path / "nowhere.jsonl"
    assert main(["data", "stats", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dfj data: error: --data {missing}: no such file") and err.count("\n") == 1

    template = tmp_path / "t.txt"
    template.write_text("no placeholders here\n", encoding="utf-8")
    assert main(["data", "stats", str(rows), "--template", str(template)]) == 2
    assert capsys.readouterr().err == (
        f"dfj data: error: --template {template}: contains neither the pointwise nor the pairwise placeholders\n"
    )


def test_a_missing_optional_module_reads_as_a_missing_extra(rows, monkeypatch, capsys):
    def needs_yaml(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")

    monkeypatch.setattr(data_cli, "load_records", needs_yaml)
    assert main(["data", "stats", str(rows)]) == 2
    assert capsys.readouterr().err == "dfj data: error: yaml is not installed: pip install 'deepfakejudge[train]'\n"

    def broken_import(*args, **kwargs):  # a module of our own that is not there: a bug
        raise ModuleNotFoundError("No module named 'deepfakejudge.nowhere'", name="deepfakejudge.nowhere")

    monkeypatch.setattr(data_cli, "load_records", broken_import)
    with pytest.raises(ModuleNotFoundError):
        main(["data", "stats", str(rows)])


def test_every_mapped_extra_exists_in_pyproject():
    from pathlib import Path

    import tomllib

    from deepfakejudge.errors import EXTRA_OF_MODULE

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert set(EXTRA_OF_MODULE.values()) <= set(extras)


def test_a_damaged_json_file_is_one_line_naming_it(tmp_path, capsys):
    from deepfakejudge.cli import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": ', encoding="utf-8")
    assert main(["export", "--adapter", str(adapter), "--out", str(tmp_path / "merged"), "--no-parity"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{adapter / 'adapter_config.json'} line 1: not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()
