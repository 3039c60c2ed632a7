"""docs/protocol.md against the daemon: every method and parameter documented as the method table
has it, nothing documented that does not exist, and the example session runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import wait_started

from msearchd import protocol
from msearchd.errors import InvalidArgument, InvalidState, MsearchError

DOC = Path(__file__).parent.parent / "docs" / "protocol.md"
KIND_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "map"}
ROW = re.compile(r"^\| `(\w+)` \| ([^|]+) \| (required|optional) \|")
ALIAS = re.compile(r"^Also accepted: `(\w+)`, the old name of `(\w+)`\.$")


def kinds_text(kinds: tuple[type, ...]) -> str:
    names = [KIND_NAMES.get(k, "nil") for k in kinds]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def documented_methods(text: str) -> dict[str, str]:
    """Method name -> its section of the Methods chapter."""
    parts = re.split(r"^### `(\w+)`$", section(text, "Methods"), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def method_problems(text: str) -> list[str]:
    problems = []
    methods = documented_methods(text)
    for name in sorted(set(protocol.METHODS) - set(methods)):
        problems.append(f"method {name} is not documented")
    for name in sorted(set(methods) - set(protocol.METHODS)):
        problems.append(f"method {name} is documented but does not exist")
    for name, body in methods.items():
        spec = {p.name: p for p in protocol.METHODS.get(name, ())}
        rows = {m[1]: (m[2].strip(), m[3]) for line in body.splitlines() if (m := ROW.match(line))}
        for param in sorted(set(spec) - set(rows)):
            problems.append(f"{name}: parameter {param} is not documented")
        for param in sorted(set(rows) - set(spec)):
            problems.append(f"{name}: parameter {param} is documented but does not exist")
        for param in sorted(set(rows) & set(spec)):
            kinds, need = rows[param]
            p = spec[param]
            if kinds != kinds_text(p.kinds):
                problems.append(f"{name}: {param} is documented as {kinds}, is {kinds_text(p.kinds)}")
            if (need == "required") != p.required:
                problems.append(f"{name}: {param} is documented as {need}")
        if not spec and "No parameters." not in body:
            problems.append(f"{name}: takes no parameters, and does not say so")
        aliases = dict(m.groups() for line in body.splitlines() if (m := ALIAS.match(line.strip())))
        if aliases != protocol.ALIASES.get(name, {}):
            accepted = protocol.ALIASES.get(name, {})
            problems.append(f"{name}: documents old names {aliases}, accepts {accepted}")
    return problems


def test_every_method_and_parameter_is_documented_as_it_is():
    assert method_problems(DOC.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("### `shutdown`", "### `stop`", "method shutdown is not documented"),
        ("| `limit` | integer | optional |", "| `limit` | integer or nil | optional |", "list: limit is"),
        ("| `priority` | integer | required |", "| `priority` | integer | optional |", "set_priority:"),
        ("| `types` | array or nil |", "| `kinds` | array or nil |", "subscribe: parameter types"),
        ("Also accepted: `task_type`, the old name of `type`.\n\nAnswer: an", "Answer: an", "retry_failed"),
    ],
)
def test_a_drift_is_reported(old, new, problem):
    text = DOC.read_text()
    assert old in text
    assert any(p.startswith(problem) for p in method_problems(text.replace(old, new, 1)))


def test_every_error_code_is_documented():
    codes = {cls.code for cls in MsearchError.__subclasses__()}
    table = section(DOC.read_text(), "Errors")
    assert set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)) == codes


def test_the_frame_bytes_shown_are_the_frame():
    text = section(DOC.read_text(), "Example session")
    shown = re.search(r"```\n([0-9a-f \n]+)```", text)
    assert shown is not None
    hello = {"id": 1, "method": "hello", "params": {"protocol": 1}}
    assert bytes.fromhex(shown[1].replace("\n", " ")) == protocol.encode(hello)
    assert f"{len(protocol.encode(hello))} bytes" in text
    assert f"{protocol.MAX_FRAME:,} bytes" in DOC.read_text()


def test_the_example_session_runs_as_written(daemon):
    code = re.search(r"```python\n(.*?)```", section(DOC.read_text(), "Example session"), re.DOTALL)
    assert code is not None
    result = subprocess.run(
        [sys.executable, "-c", code[1]], env=daemon.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:3] == ["{'id': 2, 'result': {'subscribed': True}}", "task_1 pending"]
    assert lines[3:6] == ["task_2 blocked", "command exited with code 3", "0"]
    assert "'code': 'not_found'" in lines[6]
    assert "'error': 'command exited with code 3'" in lines[-2]
    assert lines[-1] == "cancelled"


def test_one_type_is_type_and_old_names_still_work(client):
    assert client.call("cancel_by_type", type="thumbnail_generate")["task_type"] == "thumbnail_generate"
    assert client.call("cancel_by_type", task_type="thumbnail_generate")["cancelled"] == 0
    with pytest.raises(InvalidArgument, match="or its old name 'task_type', not both"):
        client.call("cancel_by_type", type="a", task_type="a")
    failed = client.submit("fail", {"message": "nope"})
    client.wait([failed["id"]], timeout=60)
    [retried] = client.call("retry_failed", type="fail")
    assert retried["task_id"] == failed["id"]
    client.wait([retried["new_task_id"]], timeout=60)  # it fails too
    [again] = client.call("retry_failed", task_type="fail")
    assert again["task_id"] == retried["new_task_id"]


def test_a_refusal_names_the_rpc_parameter(daemon, client):
    task = client.submit("command", {"argv": ["sleep", "1000"]})
    wait_started(client, task["id"])
    with pytest.raises(InvalidState) as refused:
        client.cancel(task["id"])
    assert "running=true" in refused.value.message and "--running" not in refused.value.message
    cli = daemon.ctl("tasks", "cancel", task["id"])
    assert cli.returncode == 1 and "add --running to stop it" in cli.stderr
    client.cancel(task["id"], running=True)
