"""The real servers of the test suite start and answer: PostgreSQL and a headless Chromium."""

from __future__ import annotations

import http.server
import threading

import pytest
from realparts import CHROMIUM, CHROMIUM_ARGS, postgres_bindir, postgres_server


@pytest.mark.skipif(postgres_bindir() is None, reason="PostgreSQL's server binaries are not installed")
def test_a_postgres_server_starts_and_answers():
    import psycopg

    with postgres_server() as server:
        url = server.create_database("probe")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("probe",)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package chromium)")
def test_a_headless_chromium_renders_a_local_page(tmp_path):
    from playwright.sync_api import sync_playwright

    (tmp_path / "index.html").write_text("<title>probe</title><p id=x>hello</p>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_port}/index.html")
            assert page.title() == "probe" and page.text_content("#x") == "hello"
            browser.close()
    finally:
        server.shutdown()
