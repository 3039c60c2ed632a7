"""Python task handlers the tests configure in their daemons (see HANDLERS_TOML in conftest)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from msearchd.handlers import TaskContext, TaskFailed


def _tell(path: str | None, text: str) -> None:
    """Signal the test through a named pipe (the open blocks until the test reads)."""
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


def noop(ctx: TaskContext, data: dict[str, Any]) -> None:
    for follow_up in data.get("follow_ups", []):
        new_id = ctx.submit(
            follow_up["type"],
            follow_up.get("data"),
            priority=follow_up.get("priority"),
            depends_on=follow_up.get("depends_on"),
        )
        ctx.set_operation(f"submitted {new_id}")


def quick(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Usually instant, so the daemon hands it out several at a time. Appends its id to data.record;
    with data.started, tells the test it runs; with data.fifo, waits for a line there, with
    data.sleep, sleeps (without looking at ctx.cancelled); with data.crash, kills its worker."""
    if data.get("record"):
        with open(data["record"], "a") as f:
            f.write(ctx.task_id + "\n")
    _tell(data.get("started"), "up")
    time.sleep(data.get("sleep", 0))
    if data.get("fifo"):
        with open(data["fifo"]) as gate:
            gate.readline()
    if data.get("crash"):
        os.kill(os.getpid(), signal.SIGKILL)


def fail(ctx: TaskContext, data: dict[str, Any]) -> None:
    if data.get("exception"):
        raise ValueError(data.get("message", "bad value"))
    raise TaskFailed(data.get("message", "asked to fail"))


def crash(ctx: TaskContext, data: dict[str, Any]) -> None:
    os.kill(os.getpid(), getattr(signal, data.get("signal", "SIGSEGV")))


def stepper(ctx: TaskContext, data: dict[str, Any]) -> None:
    """One progress step for each line the test writes to data.fifo; ends at the line 'end'."""
    steps = int(data["steps"])
    with open(data["fifo"]) as gate:
        for i in range(1, steps + 1):
            line = gate.readline().strip()
            if line == "":
                raise TaskFailed("the test closed the step pipe early")
            ctx.progress(i / steps, f"step {i} of {steps}")


def spawner(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Start a grandchild that ignores SIGTERM, report its pid, then wait on it without checking cancel."""
    child = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; sleep 1000"], start_new_session=data.get("escape", False)
    )
    _tell(data.get("fifo"), f"{os.getpid()} {child.pid}")
    child.wait()


def stubborn(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Claims to check for cancellation, then never stops: only SIGKILL ends it."""
    _ = ctx.cancelled
    _tell(data.get("fifo"), str(os.getpid()))
    while True:
        time.sleep(1)


def polite(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Stops by itself soon after cancellation is asked."""
    _ = ctx.cancelled  # opt in to cooperative cancel before telling the test we run
    _tell(data.get("fifo"), str(os.getpid()))
    while not ctx.cancelled:
        time.sleep(0.005)
    ctx.set_operation("cleaning up after cancel")


def tidy(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Cleans up after a cancel: tells data.told that the cancel reached it, waits for a line on
    data.gate, works data.cleanup seconds, then writes data.done (each step if given). With
    data.cooperative it watches ctx.cancelled and returns; otherwise it is interrupted and cleans up
    on its way out."""

    def clean_up() -> None:
        _tell(data.get("told"), "cancelled")
        if data.get("gate"):
            with open(data["gate"]) as gate:
                gate.readline()
        time.sleep(data.get("cleanup", 0))
        with open(data["done"], "w") as done:
            done.write("cleaned up\n")

    if data.get("cooperative"):
        _ = ctx.cancelled
        _tell(data["started"], "up")
        while not ctx.cancelled:
            time.sleep(0.005)
        clean_up()
        return
    try:  # from before it tells the test it runs: the interrupt may come at once
        _tell(data["started"], "up")
        while True:
            time.sleep(3600)
    finally:
        clean_up()


def dawdler(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Never stops by itself: once it sees the cancel, it appends each of data.marks (seconds after
    that moment, by its own clock) to data.record when that moment comes, then waits for SIGKILL."""
    _ = ctx.cancelled
    _tell(data.get("started"), "up")
    while not ctx.cancelled:
        time.sleep(0.005)
    seen = time.monotonic()
    for mark in sorted(data["marks"]):
        time.sleep(max(0.0, seen + mark - time.monotonic()))
        with open(data["record"], "a") as f:
            f.write(f"{mark}\n")
    while True:
        time.sleep(3600)


def chatty(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Reports progress as fast as it can."""
    n = int(data["reports"])
    for i in range(1, n + 1):
        ctx.progress(i / n, f"report {i}")


def forker(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Forks without exec, as multiprocessing does: the child inherits the worker's channel and
    sleeps; tells the test the child's pid (data.started), then waits for ever."""
    child = os.fork()
    if child == 0:
        time.sleep(3600)
        os._exit(0)
    _tell(data.get("started"), str(child))
    while True:
        time.sleep(3600)


def returns(ctx: TaskContext, data: dict[str, Any]) -> Any:
    """Returns data.value as the task's result; with data.not_json or data.infinite, a value with no
    JSON form (task data cannot hold infinity itself)."""
    if data.get("not_json"):
        return {"when": time}
    if data.get("infinite"):
        return {"value": float("inf")}
    return data.get("value")


def replacer(ctx: TaskContext, data: dict[str, Any]) -> list[str]:
    """Cancels data.cancel through the handler context; returns the ids it says it cancelled."""
    return ctx.cancel_waiting(data["cancel"])


def asks(ctx: TaskContext, data: dict[str, Any]) -> dict[str, bool]:
    """Says which of data.types this daemon has a handler for."""
    return {t: ctx.handles(t) for t in data["types"]}


def batcher(ctx: TaskContext, data: dict[str, Any]) -> list[str]:
    """Submits data.tasks with one request; returns their ids."""
    return ctx.submit_many(data["tasks"])


def span(ctx: TaskContext, data: dict[str, Any]) -> None:
    """Appends 'ID start T' to data.record, works data.work seconds, then appends 'ID end T'; T is
    the system's monotonic clock, the same in every process of the machine."""
    with open(data["record"], "a") as f:
        f.write(f"{ctx.task_id} start {time.monotonic()}\n")
    time.sleep(data.get("work", 0))
    with open(data["record"], "a") as f:
        f.write(f"{ctx.task_id} end {time.monotonic()}\n")
