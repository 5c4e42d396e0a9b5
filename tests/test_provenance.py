"""Provenance records the commit and whether the package's source had uncommitted changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deepfakejudge import results

PACKAGE = Path(results.__file__).resolve().parent


@pytest.mark.parametrize(("head", "status", "expected"), [
    (None, None, (None, None)),  # not a git checkout (an installed wheel)
    ("abc123\n", "", ("abc123", False)),
    ("abc123\n", " M src/deepfakejudge/parsing.py\n", ("abc123", True)),
    ("abc123\n", None, ("abc123", None)),  # status failed: unknown, not "clean"
])
def test_git_state(monkeypatch, head, status, expected):
    answers = {"rev-parse": head, "status": status}
    monkeypatch.setattr(results, "_git", lambda *args: answers[args[0]])
    assert results._git_state() == expected


def test_provenance_in_this_checkout_matches_git():
    info = results.provenance(extra_field=1)
    try:
        head = subprocess.run(["git", "-C", str(PACKAGE), "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(["git", "-C", str(PACKAGE), "status", "--porcelain", "--", str(PACKAGE)],
                                capture_output=True, text=True)
    except OSError:
        pytest.skip("git is not installed")
    if head.returncode != 0:
        assert info["git"] is None and info["git_dirty"] is None
    else:
        assert info["git"] == head.stdout.strip() and info["git_dirty"] is bool(status.stdout.strip())
    assert info["extra_field"] == 1 and info["deepfakejudge"]
