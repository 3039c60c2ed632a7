"""Run the msearchd benchmarks and print one table: our figure, the peer's, the ratio, PASS/FAIL.

    .venv/bin/python bench/run.py [--quick] [--only cli,rpc,...] [--scale N] [--json results.json]

Each benchmark starts its own daemon (and peers) in a temporary folder under /tmp and stops them.
Peers that are not installed (huey, task-spooler's tsp) are skipped with a message.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Context, Row, fmt

BENCHES: dict[str, str] = {
    "cli": "1. CLI start-up and one RPC: msearchctl vs a minimal argparse+msgpack client",
    "rpc": "2. control RPC on one connection vs a bare msgpack round trip",
    "submit": "3. submit throughput vs Huey enqueue and raw SQLite inserts",
    "dispatch": "4. dispatch throughput with 2 workers vs Huey's consumer and tsp",
    "scale": "5. a store of 1M pending tasks (100k with --quick, N with --scale N)",
    "latency": "6. submit -> completed latency on an idle daemon vs `tsp -f true`",
    "cancel": "7. cancel latency of a running command task",
    "media": "8. thumbnails of 2,000 images vs multiprocessing.Pool(2); a scan of 100,000 files",
    "shared": "9. daemons on one PostgreSQL queue vs Procrastinate; control calls on PostgreSQL vs SQLite",
}


def describe_target(row: Row) -> str:
    if not row.target:
        return ""
    kind, _, rest = row.target.partition(":")
    op, bound = rest[:2], rest[2:]
    sign = "≤" if op == "<=" else "≥"
    if kind == "ratio":
        return f"{sign} {bound}x"
    return f"{sign} {bound} {row.unit}".strip()


def table(rows: list[Row]) -> str:
    lines = [
        "| bench | metric | msearchd | peer / baseline | peer value | ratio | target | result |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        ours = f"{fmt(r.ours)} {r.unit}".strip() if r.ours is not None else "-"
        peer = f"{fmt(r.peer)} {r.unit}".strip() if r.peer is not None else "-"
        ratio = f"{fmt(r.ratio)}x" if r.ratio is not None else ""
        verdict = r.verdict
        if verdict == "SKIP" and r.note:
            verdict = f"SKIP ({r.note})"
        lines.append(
            f"| {r.bench} | {r.metric} | {ours} | {r.peer_name} | {peer if r.peer_name else ''} | {ratio} "
            f"| {describe_target(r)} | {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations; 100k tasks for scale")
    parser.add_argument(
        "--scale",
        type=int,
        metavar="N",
        help="pending tasks in the scale benchmark (default 1,000,000; 100,000 with --quick)",
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--json", type=Path, help="also write the rows and details to this file")
    args = parser.parse_args()
    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    ctx = Context(quick=args.quick, scale=args.scale)
    mode = "quick" if args.quick else "full"
    print(
        f"msearchd benchmarks, {mode} mode: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    errors: list[str] = []
    started = time.perf_counter()
    for name in names:
        print(f"\n== {BENCHES[name]}", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(f"bm_{name}").run(ctx)
        except Exception as exc:
            traceback.print_exc()
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            ctx.rows.append(Row(name, "benchmark failed to run", None, note=str(exc)[:80]))
        print(f"   ({name} took {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n== results ({mode} mode, {time.perf_counter() - started:.0f} s)\n")
    print(table(ctx.rows))
    verdicts = [r.verdict for r in ctx.rows if r.verdict]
    print(
        f"\n{verdicts.count('PASS')} PASS, {verdicts.count('FAIL')} FAIL, {verdicts.count('SKIP')} SKIP"
        + (f", {len(errors)} benchmark(s) errored" if errors else "")
    )
    for e in errors:
        print(f"  error in {e}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "mode": mode,
                    "rows": [r.as_dict() for r in ctx.rows],
                    "details": ctx.details,
                    "errors": errors,
                },
                indent=2,
            )
        )
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
