"""Under DFJ_CI=1 (set by `.ci/run`) a skip fails the run unless the test is marked `gpu` or
`reference`; on a laptop skips stay skips; an unknown marker is an error (--strict-markers)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")
CASES = '''
import pytest

pytest.importorskip("json")  # present: the module is collected


def test_runs():
    pass


def test_needs_a_server():
    pytest.skip("PostgreSQL server not installed")


@pytest.mark.gpu
def test_needs_cuda():
    pytest.skip("needs a CUDA device")


@pytest.mark.reference
def test_needs_the_authors_files():
    pytest.skip("not beside the clone")
'''
INI = '''
[pytest]
markers =
    gpu: needs a CUDA device
    reference: the authors' files
addopts = --strict-markers
strict_markers = true
'''


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_cases=CASES)
    return pytester


def test_a_laptop_skips(project, monkeypatch):
    monkeypatch.delenv("DFJ_CI", raising=False)
    project.runpytest_subprocess().assert_outcomes(passed=1, skipped=3)


def test_ci_fails_an_unexpected_skip_and_keeps_gpu_and_reference_skips(project, monkeypatch):
    monkeypatch.setenv("DFJ_CI", "1")
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=1, skipped=2, failed=1)
    result.stdout.fnmatch_lines(["*test_needs_a_server skipped under DFJ_CI=1 (*PostgreSQL server not installed*"])


def test_ci_fails_a_module_that_skips_at_import(project, monkeypatch):
    project.makepyfile(test_extra='import pytest\npytest.importorskip("no_such_module_dfj")\n\ndef test_x():\n    pass\n')
    monkeypatch.setenv("DFJ_CI", "1")
    result = project.runpytest_subprocess("test_extra.py")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*test_extra.py skipped under DFJ_CI=1*no_such_module_dfj*"])


def test_a_misspelt_marker_is_an_error(project):
    project.makepyfile(test_typo="import pytest\n\n@pytest.mark.gpuu\ndef test_x():\n    pass\n")
    result = project.runpytest_subprocess("test_typo.py")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'gpuu' not found in `markers` configuration option*"])


def test_the_suite_runs_with_strict_markers(pytestconfig):
    # pyproject's addopts: a misspelt marker (say `gpuu`, which CI would not let skip) is an error.
    assert pytestconfig.getini("strict_markers") is True
