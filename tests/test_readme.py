"""The README as a user reads it: its tour and its Python example run as written against a fresh daemon,
and its layout names every module where it lies."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from conftest import BIN, left_behind
from support import dead

README = Path(__file__).parent.parent / "README.md"


def tour() -> list[str]:
    text = README.read_text()
    start = text.index("## A short tour\n\n```sh\n") + len("## A short tour\n\n```sh\n")
    return [line for line in text[start : text.index("```", start)].splitlines() if line.strip()]


def expected_status(line: str) -> int:
    """What the line's comment says it exits with: `# exit N: ...`, or 0."""
    said = re.search(r"#\s+exit (\d+)\b", line)
    return int(said[1]) if said else 0


def test_the_tour_runs_as_written():
    lines = tour()
    assert lines[0].startswith(".venv/bin/msearchd ") and lines[0].split("#")[0].rstrip().endswith("&")
    root = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSEARCH_", "XDG_"))}
    env.update(
        MSEARCH_SOCKET=str(root / "run" / "msearchd.sock"),
        MSEARCH_STATE_DIR=str(root / "state"),
        XDG_CONFIG_HOME=str(root / "config"),
    )
    script = [f"cd {root}", f"ln -s {BIN.parent} .venv", "exec 3>codes"]
    commands = []
    for line in lines:
        script.append(line)
        if line.startswith(".venv/bin/msearchd "):
            script.append("echo $! > daemon.pid")
        elif line.startswith("msearchctl "):
            script.append('echo "$?" >&3')
            commands.append(line)
    try:
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)], env=env, capture_output=True, text=True, timeout=300
        )
        codes = [int(c) for c in (root / "codes").read_text().split()]
        got = list(zip(commands, codes, strict=True))
        assert got == [(c, expected_status(c)) for c in commands], result.stdout + result.stderr
        assert "task_4 -> task_5" in result.stdout and "task_5 -> task_6" in result.stdout
        pid = int((root / "daemon.pid").read_text())
        deadline = time.monotonic() + 30  # it closed its connections: it exits next
        while not dead(pid) and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=0.1)
        assert dead(pid)
    finally:
        pid = int((root / "daemon.pid").read_text())
        if not dead(pid):
            os.kill(pid, 15)
        left = left_behind([root / "state"])
        subprocess.run(["rm", "-rf", str(root)], check=False)
    assert not left


def test_the_python_client_example_runs_as_written(daemon):
    text = README.read_text()
    start = text.index("```python\n", text.index("## Python client")) + len("```python\n")
    code = text[start : text.index("```", start)]
    # The example ends by following events for ever: run it up to there, and say where things stand.
    code = code[: code.index("    for event in ")]
    code += "    print(done['status'], done['priority'], ended['status'], ended['timed_out'])\n"
    result = subprocess.run(
        [sys.executable, "-c", code], env=daemon.env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "completed 0 completed False\n"


def layout_sections() -> dict[str, str]:
    """The README's layout, by package ("msearchd/http"): the text of each package's entry, whose line
    starts with its folder, indented under its parent's."""
    text = README.read_text()
    start = text.index("## Layout\n\n```\n") + len("## Layout\n\n```\n")
    sections: dict[str, str] = {}
    parents: list[tuple[int, str]] = []  # (indent, path) of the entries above this one
    for line in text[start : text.index("```", start)].splitlines():
        entry = re.match(r"( *)([a-z_]+)/ ", line)
        if entry:
            indent = len(entry[1])
            parents = [(i, p) for i, p in parents if i < indent]
            path = "/".join([*(p for _, p in parents[-1:]), entry[2]])
            parents.append((indent, path))
            sections[path] = line[entry.end() :]
        elif parents:
            sections[parents[-1][1]] += " " + line.strip()
    return sections


def test_the_layout_names_every_module_under_its_package():
    sections = layout_sections()
    root = README.parent
    missing = []
    for package in ("msearchd", "msearchctl"):
        for module in sorted((root / package).rglob("*.py")):
            if module.stem in ("__init__", "__main__"):
                continue
            where = module.parent.relative_to(root).as_posix()
            if not re.search(rf"\b{module.stem}\b", sections.get(where, "")):
                missing.append(module.relative_to(root).as_posix())
    assert not missing, f"the README's layout does not name these under their package: {missing}"
