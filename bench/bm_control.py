"""Control over many tasks: a selection's dry run and real run over a large queue, the p99 of other
calls meanwhile, and submit throughput with keys against without. Run on its own (it takes minutes):

    .venv/bin/python bench/bm_control.py [--tasks 1000000] [--submits 2000] [--rounds 4] [--cancels]
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from benchlib import median, ms, percentile, running_daemon, temp_root

FILL_BATCH = 10_000
TYPES = ("file_embed_video", "file_embed_image", "thumbnail_generate", "preview_generate")


def fill(c: Any, n: int) -> None:
    """n pending tasks of four types, every other one under /mnt/nas/; the queue paused so none runs."""
    c.pause()
    for start in range(0, n, FILL_BATCH):
        batch = [
            {
                "type": TYPES[i % len(TYPES)],
                "data": {"path": f"/mnt/nas/{i}.mp4" if i % 2 else f"/home/u/{i}.mp4"},
                "priority": 5,
            }
            for i in range(start, min(n, start + FILL_BATCH))
        ]
        c.submit_many(batch)


class Prober:
    """Times small calls (`get` of one task) on a connection of its own while something else runs."""

    def __init__(self, d: Any) -> None:
        self._client = d.client()
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self._client as c:
            while not self._stop.is_set():
                start = time.perf_counter()
                c.get(1)
                self.latencies.append(time.perf_counter() - start)
                self._stop.wait(0.005)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_call(d: Any, fn: Any) -> tuple[float, Any, list[float]]:
    with Prober(d) as probe:
        start = time.perf_counter()
        result = fn()
        took = time.perf_counter() - start
    return took, result, probe.latencies


def report(what: str, took: float, latencies: list[float]) -> None:
    p99 = ms(percentile(latencies, 99)) if latencies else float("nan")
    p50 = ms(median(latencies)) if latencies else float("nan")
    print(
        f"{what}: {took:.2f} s; other calls meanwhile: {len(latencies)}, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


def bulk(tasks: int) -> None:
    with temp_root() as root, running_daemon(root, workers=1) as d, d.client() as c:
        start = time.perf_counter()
        fill(c, tasks)
        print(f"queued {tasks} tasks in {time.perf_counter() - start:.1f} s")
        select = {"types": ["file_embed_*"], "where": ["path^=/mnt/nas/"]}
        took, dry, lat = timed_call(d, lambda: c.cancel_selected(select, dry_run=True))
        report(f"dry run of a cancel selecting {dry['count']} tasks", took, lat)
        took, dry_p, lat = timed_call(d, lambda: c.set_priority_selected(select, 11, dry_run=True))
        report(f"dry run of a priority change selecting {dry_p['count']}", took, lat)
        took, done, lat = timed_call(
            d, lambda: c.set_priority_selected(dry["selection"], 11, up_to=dry["up_to"], expect=dry["count"])
        )
        report(f"priority change of {done['changed']} tasks", took, lat)
        took, done, lat = timed_call(
            d, lambda: c.cancel_selected(dry["selection"], up_to=dry["up_to"], expect=dry["count"])
        )
        report(
            f"cancel of {done['cancelled']} tasks (changed meanwhile: {done['changed_meanwhile']})", took, lat
        )
        took, dry, lat = timed_call(d, lambda: c.cancel_selected({}, dry_run=True))
        report(f"dry run of a cancel of every task left ({dry['count']})", took, lat)
        took, done, lat = timed_call(
            d, lambda: c.cancel_selected({}, up_to=dry["up_to"], expect=dry["count"])
        )
        report(f"cancel of every task left ({done['cancelled']})", took, lat)


def cancels(tasks: int) -> None:
    """cancel-by-type of one type (a quarter of the queue, every fourth id), then cancel-all of the rest."""
    with temp_root() as root, running_daemon(root, workers=1) as d, d.client() as c:
        fill(c, tasks)
        took, done, lat = timed_call(d, lambda: c.cancel_by_type(TYPES[0]))
        report(f"cancel_by_type of {done['cancelled']} tasks", took, lat)
        took, done, lat = timed_call(d, c.cancel_all)
        report(f"cancel_all of {done['cancelled']} tasks", took, lat)


def submits(n: int, rounds: int) -> None:
    """One daemon, rounds alternating plain and keyed submits (sequential calls, then pipelined)."""
    with temp_root() as root, running_daemon(root, workers=1) as d, d.client() as c:
        c.pause()
        rates: dict[str, list[float]] = {}
        for r in range(rounds):
            for keyed in (False, True):
                label = "keyed" if keyed else "plain"
                start = time.perf_counter()
                for i in range(n):
                    key = {"key": f"r{r}:seq:{i}"} if keyed else {}
                    c.submit("file_scan", {"path": f"/x/{i}"}, **key)
                rates.setdefault(f"{label}, one call at a time", []).append(n / (time.perf_counter() - start))
                start = time.perf_counter()
                with c.pipeline() as p:
                    for i in range(n):
                        key = {"key": f"r{r}:pipe:{i}"} if keyed else {}
                        p.submit("file_scan", {"path": f"/x/{i}"}, **key)
                rates.setdefault(f"{label}, pipelined", []).append(n / (time.perf_counter() - start))
        for label, values in rates.items():
            print(f"submits/s {label}: median {median(values):.0f} of {[round(v) for v in values]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cancels", action="store_true", help="only cancel_by_type and cancel_all")
    args = parser.parse_args()
    if args.cancels:
        cancels(args.tasks)
        return
    submits(args.submits, args.rounds)
    bulk(args.tasks)


if __name__ == "__main__":
    main()
