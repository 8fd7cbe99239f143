"""A headless Chromium page for the in-browser bundle verifier (node/console/static/verify/).

The static files are served over a local HTTP server (ES modules and Web
Crypto need an http://127.0.0.1 origin). Each browser test module opens one
page for the module (:func:`open_verifier_page`); :func:`browser_outcomes`
runs verifyBundle on bundles in it, :func:`python_outcome` runs
node.receipts.verify.BundleVerifier on one, in the same (ok, part, exit code) form.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from node.base import codec
from node.consensus.genesis import Genesis
from node.receipts.verify import BundleInvalid, BundleVerifier

STATIC = Path(__file__).resolve().parents[2] / "node" / "console" / "static"
CHROMIUM = Path("/usr/bin/chromium")

Outcome = tuple[bool, str | None, int]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:
        if self.path == "/":
            body = b"<!doctype html><meta charset=utf-8><title>verifier test</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@contextmanager
def open_verifier_page() -> Iterator[Any]:
    """A Chromium page on an http://127.0.0.1 origin serving node/console/static."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: install it with `apt-get install -y chromium` (expected at /usr/bin/chromium)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: install the test extras (`pip install -e .[test]`, playwright==1.65.2)", pytrace=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(STATIC)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            yield page
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


VERIFY_MANY = """async ([genesisHex, bundlesHex, issuers]) => {
  const { verifyBundle } = await import("/verify/bundle.js");
  const { fromHex } = await import("/verify/cbor.js");
  const genesis = fromHex(genesisHex);
  const policy = Array.isArray(issuers) ? issuers.map(fromHex) : issuers;
  const out = [];
  for (const hex of bundlesHex) {
    const r = await verifyBundle(fromHex(hex), genesis, { issuers: policy });
    out.push(r.ok ? [true, null, 0, r.receiptId, String(r.height), r.leafIndex, r.validators, r.genesisHash]
                  : [false, r.part, r.exitCode, r.detail]);
  }
  return out;
}"""


def genesis_cbor(genesis: Genesis) -> str:
    return codec.encode(genesis.to_value()).hex()


def browser_outcomes(page: Any, genesis: Genesis, bundles: list[bytes], issuers: Any = "any") -> list[list[Any]]:
    return page.evaluate(VERIFY_MANY, [genesis_cbor(genesis), [b.hex() for b in bundles], issuers])


def python_outcome(verifier: BundleVerifier, data: bytes) -> Outcome:
    try:
        verifier.verify(data)
    except BundleInvalid as exc:
        return (False, exc.part, exc.exit_code)
    return (True, None, 0)
