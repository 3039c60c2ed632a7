"""The Procrastinate peer of bench/bm_shared.py: an app with a no-op task, and a worker process.

BENCH_PG_URL=postgresql://... python bench/procrastinate_app.py CONCURRENCY   # a worker, until SIGTERM
"""

from __future__ import annotations

import os
import sys

import procrastinate


def make_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    def noop() -> None:
        """Do nothing: what is measured is the queue, not the work."""

    return app


if __name__ == "__main__":
    make_app(os.environ["BENCH_PG_URL"]).run_worker(
        concurrency=int(sys.argv[1]), wait=True, listen_notify=True
    )
