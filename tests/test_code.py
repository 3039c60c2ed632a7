"""The code's own rules, as pyproject.toml sets them: ruff's lint and format, and mypy's types. Run as
tests, so that the suite (and CI with it) fails on a change that breaks them."""

from __future__ import annotations

import subprocess

import pytest
from conftest import BIN, TESTS

ROOT = TESTS.parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("check", [("ruff", "check", "."), ("ruff", "format", "--check", ".")])
def test_ruff_finds_nothing(check: tuple[str, ...]):
    result = run(*check)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_packages_type_check():
    result = run("mypy")  # the packages and options of [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found"), result.stdout
