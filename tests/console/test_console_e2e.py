"""The console end to end: ``metanode demo --keep`` (a real 4-node cluster of
daemon processes, its trend and SQL jobs verified on two nodes each), the
console command the demo prints, run as a process, and a headless Chromium
using it as a user would.

This is the issue-17 "done when" check: the console of a kept demo shows the
demo's jobs, the trend chart (one line per group of the real result) and the
receipts verified in the browser; a tampered bundle is refused for the same
reason as node.receipts.verify.BundleVerifier gives; a job submitted with the
CLI goes to verified on the open jobs page without a reload; a request
without the token is refused. One cluster, one console and one browser for
the module; every visited page is kept as a screenshot under
tests/console/artifacts/e2e/ (git-ignored); the jobs page and the trend chart
are copied to docs/images/console-{jobs,trend}.png for the README when those
are missing or METANODE_README_IMAGES=1.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node.consensus.genesis import load_genesis
from node.receipts.bundle import decode_bundle
from node.receipts.verify import BundleInvalid, BundleVerifier
from node.testnet import processes
from tests.support import METANODE, run_cli

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "e2e"
README_IMAGES = ROOT / "docs" / "images"
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}
DEMO_TIMEOUT = 180.0
WAIT_MS = 30_000  # the longest a page waits for the cluster (a job takes a few blocks)


# ------------------------------------------------------------------------------------------ the cluster and console

@dataclass(frozen=True)
class Demo:
    """A kept demo cluster: its directory and the console command it printed."""

    directory: Path
    console_args: list[str]

    @property
    def genesis(self) -> Path:
        return self.directory / "genesis.toml"

    @property
    def node(self) -> str:
        return self.console_args[self.console_args.index("--node") + 1]

    @property
    def key(self) -> str:
        return self.console_args[self.console_args.index("--key") + 1]


@dataclass(frozen=True)
class Console:
    """A running ``metanode console`` process and the URL it printed."""

    url: str  # http://127.0.0.1:PORT/?token=...

    @property
    def base(self) -> str:
        return self.url.split("/?", 1)[0]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium first: without it nothing else is worth starting."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is missing: install it with `apt-get install -y chromium` (expected at {CHROMIUM})", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: install the test extras (`pip install -e .[test]`, playwright==1.65.2)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def demo(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``metanode demo --keep`` in a directory of its own; stopped afterwards whatever happened."""
    directory = tmp_path_factory.mktemp("console-e2e") / "demo"
    try:
        done = run_cli("demo", "--keep", "--dir", str(directory), timeout=DEMO_TIMEOUT)
        assert done.returncode == 0, f"metanode demo --keep failed: {done.stderr[-3000:]}"
        command = done.stdout.rstrip("\n").splitlines()[-1].strip()
        assert command.startswith("metanode console "), f"the demo's last line is not the console command: {command!r}"
        yield Demo(directory, shlex.split(command)[1:])
    finally:
        if (directory / "testnet.json").exists():
            processes.down(directory)


@pytest.fixture(scope="module")
def console(demo: Demo) -> Iterator[Console]:
    """The console command as the demo printed it, plus --no-browser and a free port."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = (ARTIFACTS / "console.log").open("w")  # the console's own log, for when a page fails
    proc = subprocess.Popen([*METANODE, *demo.console_args, "--no-browser", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        url = None
        while url is None:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                raise AssertionError("metanode console printed no URL within 60 s") from None
            if line is None:
                raise AssertionError(f"metanode console exited ({proc.wait()}): {(ARTIFACTS / 'console.log').read_text()[-2000:]}")
            if "open: " in line:
                url = line.split("open: ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url, url
        yield Console(url)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def context(browser: Any, console: Console) -> Iterator[Any]:
    """The signed-in browser context (the token URL opened once), shared by the tests."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(console.url)
    page.close()
    try:
        yield context
    finally:
        context.close()


def watch(page: Any) -> list[str]:
    """Every script error, error message and failed or refused request of ``page``, as it happens."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text} at {msg.location.get('url')}")
            if msg.type == "error" else None)
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}: {request.failure}"))
    page.on("response", lambda response: errors.append(f"HTTP {response.status} for {response.url}")
            if response.status >= 400 else None)
    PAGE_ERRORS[id(page)] = errors
    return errors


PAGE_ERRORS: dict[int, list[str]] = {}


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A page of the signed-in context; any script error or failed request on it fails the test."""
    page = context.new_page()
    errors = watch(page)
    yield page
    found = list(errors)  # before closing, which ends the page's event stream on purpose
    page.close()
    PAGE_ERRORS.pop(id(page), None)
    assert not found, found


def open_route(page: Any, console: Console, route: str) -> None:
    """Open ``route`` (``#/jobs/ID``...) and wait until its page has rendered.
    A route of the same document is a hash change: ``data-ready`` is cleared
    first so that the wait is for the new page, not the one shown before."""
    page.evaluate("document.getElementById('main')?.setAttribute('data-ready', 'false')")
    page.goto(f"{console.base}/{route}")
    page.wait_for_selector("main[data-ready=true]", timeout=WAIT_MS)
    shown = page.locator("[data-testid=error]").all_inner_texts()
    assert not shown, (route, shown, PAGE_ERRORS.get(id(page)))


def screenshot(page: Any, name: str) -> Path:
    """The viewport as a user sees it (focus rings left out: the router focuses each page's heading)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.evaluate("document.activeElement?.blur()")
    page.screenshot(path=str(path))
    return path


def readme_image(shot: Path, name: str) -> None:
    """Copy ``shot`` to docs/images/NAME when it is not there yet, or always
    with METANODE_README_IMAGES=1: a test run leaves the committed images
    (and so the working tree) alone unless asked to refresh them."""
    target = README_IMAGES / name
    if os.environ.get("METANODE_README_IMAGES") == "1" or not target.exists():
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


# Pairs of x-axis labels of one chart whose drawn boxes overlap.
_OVERLAPPING_LABELS = """() => [...document.querySelectorAll("[data-testid=trend-chart] svg")].flatMap((chart) => {
  const boxes = [...chart.querySelectorAll(".x-axis text")].map((t) => [t.textContent, t.getBBox()]);
  return boxes.slice(1).filter(([, b], i) => b.x < boxes[i][1].x + boxes[i][1].width).map(([label], i) => [boxes[i][0], label]);
})"""


def api(page: Any, path: str) -> Any:
    """An API answer as the signed-in page gets it."""
    return page.evaluate("(path) => fetch(path).then((r) => r.json())", path)


def demo_jobs(page: Any) -> dict[str, dict[str, Any]]:
    """The demo's two jobs by type (trend-analysis, sql), the oldest of each type."""
    jobs: dict[str, dict[str, Any]] = {}
    for job in reversed(api(page, "/api/jobs")["jobs"]):  # newest first: reversed, the demo's come first
        jobs.setdefault(job["type"], job)
    assert {"trend-analysis", "sql"} <= set(jobs), jobs
    return jobs


# ------------------------------------------------------------------------------------------ tests

def test_a_request_without_the_token_is_refused(browser: Any, console: Console) -> None:
    stranger = browser.new_context(viewport=VIEWPORT)
    try:
        answer = stranger.request.get(f"{console.base}/api/session")
        assert answer.status == 401 and "error" in answer.json()
        assert stranger.request.get(f"{console.base}/?token=not-the-token", max_redirects=0).status == 401
        page = stranger.new_page()
        response = page.goto(f"{console.base}/")
        assert response is not None and response.status == 401
        assert "open the" in page.inner_text("body").lower()
        screenshot(page, "no-token")
        assert not stranger.cookies()  # nothing was handed out
    finally:
        stranger.close()


def test_the_token_url_logs_in_and_the_jobs_page_lists_the_demo_jobs_verified(browser: Any, console: Console, demo: Demo) -> None:
    fresh = browser.new_context(viewport=VIEWPORT)
    try:
        page = fresh.new_page()
        errors = watch(page)
        page.goto(console.url)
        assert page.url == f"{console.base}/"  # the token is out of the address bar
        assert [c["name"] for c in fresh.cookies()] == ["metanode_console"]
        page.wait_for_selector("main[data-ready=true]")
        session = api(page, "/api/session")
        assert session["chain_id"] == "metanode-testnet" and session["genesis_file"] == str(demo.genesis)
        assert session["node"] == demo.node and session["genesis_cbor"]
        screenshot(page, "home")
        jobs = demo_jobs(page)
        open_route(page, console, "#/jobs")
        for job in jobs.values():
            row = page.locator(f"[data-testid=job-row][data-job='{job['id']}']")
            assert row.get_attribute("data-state") == "verified"
            assert row.locator("[data-testid=job-state]").inner_text() == "verified"
        readme_image(screenshot(page, "jobs"), "console-jobs.png")
        assert not errors, errors  # a first visit asks for the page's icon too
    finally:
        fresh.close()


def test_the_trend_job_page_draws_one_line_per_group_of_its_result(page: Any, console: Console) -> None:
    open_route(page, console, "")
    trend = demo_jobs(page)["trend-analysis"]
    result = api(page, f"/api/jobs/{trend['id']}/result")
    names = [column[0] for column in result["columns"]]
    groups = sorted({str(row[names.index("group")]) for row in result["rows"]})
    assert len(groups) == 4, groups  # the sample data's four products
    open_route(page, console, f"#/jobs/{trend['id']}")
    page.locator("[data-testid=tab-chart]").click()
    series = page.locator("[data-testid=trend-series]")
    assert series.count() == len(groups)
    assert sorted(series.nth(i).get_attribute("data-group") for i in range(series.count())) == groups
    assert page.locator("[data-testid=trend-chart]").count() == len(groups)
    assert page.locator("[data-testid=trend-average]").count() == len(groups)
    assert page.evaluate(_OVERLAPPING_LABELS) == []  # 106 weeks of dates on the x axis, readable
    directions = page.locator("[data-testid=trend-slope]")
    assert sorted(directions.nth(i).get_attribute("data-group") for i in range(directions.count())) == groups
    readme_image(screenshot(page, "job-trend"), "console-trend.png")
    page.locator("[data-testid=tab-timeline]").click()
    assert page.locator("[data-testid=timeline-event][data-event=result]").count() == 2  # replication 2
    screenshot(page, "job-trend-timeline")
    sql = demo_jobs(page)["sql"]
    open_route(page, console, f"#/jobs/{sql['id']}")
    page.locator("[data-testid=tab-result]").click()
    assert "8 rows" in page.locator("[data-testid=result-digest]").inner_text()
    screenshot(page, "job-sql-result")


@pytest.mark.parametrize("job_type", ["trend-analysis", "sql"])
def test_every_receipt_of_a_demo_job_verifies_in_the_browser(page: Any, console: Console, job_type: str) -> None:
    open_route(page, console, "")
    job = demo_jobs(page)[job_type]
    receipts = api(page, f"/api/jobs/{job['id']}/receipts")["receipts"]
    assert receipts and all(r["bundle"] for r in receipts), receipts
    assert {"job.exec", "job.verdict"} <= {r["kind"] for r in receipts}
    open_route(page, console, f"#/receipts/{job['id']}")
    page.wait_for_selector("[data-testid=receipt-summary][data-done=true]", timeout=WAIT_MS)
    verdicts = page.locator("[data-testid=receipt-table] [data-testid=receipt-status]")
    assert verdicts.count() == len(receipts)
    assert [verdicts.nth(i).get_attribute("data-ok") for i in range(len(receipts))] == ["true"] * len(receipts)
    summary = page.locator("[data-testid=receipt-summary]").inner_text()
    assert summary == f"{len(receipts)} of {len(receipts)} receipts verified in this browser.", summary
    screenshot(page, f"receipts-{job_type}")


def _flip_a_seal_signature(bundle: bytes) -> bytes:
    """The bundle with one byte of its sealing header's first commit seal signature flipped, in place."""
    signature = decode_bundle(bundle).seals[0][1]
    assert bundle.count(signature) == 1
    at = bundle.index(signature) + 5
    return bundle[:at] + bytes([bundle[at] ^ 0x01]) + bundle[at + 1:]


def test_a_tampered_bundle_is_refused_in_the_browser_for_the_verifier_reason(page: Any, console: Console, demo: Demo,
                                                                           tmp_path: Path) -> None:
    open_route(page, console, "")
    job = demo_jobs(page)["sql"]
    receipt = next(r for r in api(page, f"/api/jobs/{job['id']}/receipts")["receipts"] if r["kind"] == "job.exec")
    genuine = bytes.fromhex(receipt["bundle"])
    tampered = _flip_a_seal_signature(genuine)
    verifier = BundleVerifier(load_genesis(demo.genesis))
    verifier.verify(genuine)
    with pytest.raises(BundleInvalid) as refused:
        verifier.verify(tampered)
    expected = (refused.value.part, refused.value.exit_code)
    assert expected == ("header", 13), refused.value  # a bad commit seal: the header is not sealed by a quorum
    open_route(page, console, f"#/receipts/{job['id']}")
    page.wait_for_selector("[data-testid=receipt-summary][data-done=true]", timeout=WAIT_MS)
    checker = page.locator("section:has([data-testid=bundle-file])")
    for name, data, outcome in (("genuine.bundle", genuine, None), ("tampered.bundle", tampered, expected)):
        path = tmp_path / name
        path.write_bytes(data)
        page.locator("[data-testid=bundle-file]").set_input_files(str(path))
        checker.locator(f"p:text-is('{name}:')").wait_for(timeout=WAIT_MS)
        status = checker.locator("[data-testid=receipt-status]")
        if outcome is None:
            assert status.get_attribute("data-ok") == "true"
        else:
            assert status.get_attribute("data-ok") == "false"
            assert (status.get_attribute("data-part"), int(status.get_attribute("data-exit"))) == outcome
            assert status.locator("[data-testid=receipt-detail]").inner_text()
    screenshot(page, "receipts-tampered")


def test_a_job_submitted_with_the_cli_goes_to_verified_on_the_open_jobs_page(page: Any, console: Console, demo: Demo) -> None:
    open_route(page, console, "#/jobs")
    page.locator("#live-state[data-state='live']").wait_for(timeout=WAIT_MS)  # a locator wait: no eval under the CSP
    page.evaluate("window.__sameDocument = true")
    # Every state a job row is drawn with, in order, from here on.
    page.evaluate("""() => {
      window.__seen = [];
      const note = (row) => {
        const last = window.__seen.filter((s) => s[0] === row.dataset.job).pop();
        if (!last || last[1] !== row.dataset.state) window.__seen.push([row.dataset.job, row.dataset.state]);
      };
      new MutationObserver(() => document.querySelectorAll("[data-testid=job-row]").forEach(note))
        .observe(document.getElementById("main"), { subtree: true, childList: true, attributes: true });
    }""")
    env = {**os.environ, "METANODE_NODE": demo.node, "METANODE_KEY": demo.key}
    done = subprocess.run([*METANODE, "analytics", "submit", "--dataset", "sales", "--type", "sql", "--replication", "2",
                           "--query", "SELECT product, count(*) AS days FROM sales GROUP BY product ORDER BY product", "--json"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job_id"]
    page.wait_for_selector(f"[data-testid=job-row][data-job='{job_id}']", timeout=WAIT_MS)
    page.wait_for_selector(f"[data-testid=job-row][data-job='{job_id}'][data-state=verified]", timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument") is True  # no reload, no navigation
    seen = [state for job, state in page.evaluate("window.__seen") if job == job_id]
    # The row came live (it was not there when the page loaded) and ends verified. A job can
    # now go from submitted to verified within one redraw of the list, so the states in
    # between are not always drawn; a state changed in place is checked with scripted events
    # in test_console_pages.py (test_a_job_event_changes_the_state_in_the_list_without_a_reload).
    assert seen and seen[-1] == "verified", f"the row's states on the page: {seen}"
    screenshot(page, "jobs-live")


def test_the_other_pages_render_the_real_cluster(page: Any, console: Console) -> None:
    open_route(page, console, "#/cluster")
    assert page.locator("[data-testid=node-row]").count() == 4
    screenshot(page, "cluster")
    open_route(page, console, "#/chain")
    assert page.locator("[data-testid=block-row]").count() >= 10
    screenshot(page, "chain")
    height = page.locator("[data-testid=block-row]").first.get_attribute("data-height")
    open_route(page, console, f"#/chain/{height}")
    assert page.locator("[data-testid=seal-row]").count() >= 3  # a quorum of the four validators
    screenshot(page, "block")
    open_route(page, console, "#/datasets")
    assert page.locator("[data-testid=dataset-row]").count() == 1
    screenshot(page, "datasets")
    open_route(page, console, "#/audit")
    page.locator("[data-testid=audit-sql]").fill("SELECT kind, count(*) AS receipts FROM receipts GROUP BY kind ORDER BY kind")
    page.locator("[data-testid=audit-run]").click()
    page.locator("[data-testid=audit-table]").wait_for(timeout=WAIT_MS)
    # the node's receipt log, through the console: every kind the demo's jobs left
    kinds = {row.split("\t")[0].strip() for row in page.locator("[data-testid=audit-row]").all_inner_texts()}
    assert {"api.call", "job.exec", "job.schedule", "job.verdict"} <= kinds, kinds
    screenshot(page, "audit")
