"""`python -m msearchd.http`: the shim on its own; without the http extra, one sentence and exit code 2."""

import sys

from msearchd.httpshim import EXIT_USAGE, UsageError, check_http_extra

try:
    import fastapi  # noqa: F401
    import fastapi_offline  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # the http extra is not installed: say so in one sentence, as msearchd --http
    try:
        check_http_extra("python -m msearchd.http", exc)
    except UsageError as refusal:
        print(f"msearchd-http: {refusal}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    raise

from msearchd.http.server import main

main()
