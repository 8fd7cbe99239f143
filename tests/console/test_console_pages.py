"""The console's pages (node/console/static) in a real headless Chromium.

The JSON API is console_fake.py's fake, shaped as the issue-17 contract says,
serving the real static files; in-browser receipt checks run engineer K1's
real verify/bundle.js on real bundles. Each test drives the pages as a user
would (keyboard, clicks, drops) and pushes live events through a real
server-sent-event stream. The end-to-end test against a testnet and the real
console server is the lead's; this module checks what the pages do with the
answers. Screenshots of every page at 1280 and 375 px go to
tests/console/artifacts/ (git-ignored).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_fake import LATE_PEER, RUNNING_JOB, STATIC, TREND_JOB, Canned, FakeConsole

from node.base.keys import peer_id_from_public_key

playwright_sync = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
WIDTHS = (1280, 375)

# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def canned() -> Canned:
    return Canned()


@pytest.fixture(scope="module")
def fake(canned: Canned) -> Iterator[FakeConsole]:
    server = FakeConsole(canned)
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, fake: FakeConsole) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "404" not in msg.text
            and "409" not in msg.text and "400" not in msg.text else None)
    yield page
    context.close()
    assert not errors, errors


def open_page(page: Any, fake: FakeConsole, route: str) -> None:
    page.goto(fake.url + route)
    page.wait_for_selector("main[data-ready=true]")


def by_testid(page: Any, name: str) -> Any:
    return page.locator(f"[data-testid={name}]")


# ------------------------------------------------------------------------------------------ tests

PAGES = [
    ("cluster", "#/cluster", "node-row", 5),
    ("chain", "#/chain", "block-row", 4),
    ("block", "#/chain/3", "seal-row", 3),
    ("jobs", "#/jobs", "job-row", 3),
    ("job-trend", f"#/jobs/{TREND_JOB}", "trend-chart", 3),
    ("job-running", f"#/jobs/{RUNNING_JOB}", "timeline-event", 5),
    ("datasets", "#/datasets", "dataset-row", 3),
    ("receipts", f"#/receipts/{TREND_JOB}", "receipt-row", 5),
    ("audit", "#/audit", "audit-sql", 1),
]


@pytest.mark.parametrize(("name", "route", "testid", "count"), PAGES, ids=[p[0] for p in PAGES])
def test_each_page_renders_from_the_api_at_laptop_and_phone_widths(page: Any, fake: FakeConsole, name: str, route: str,
                                                                   testid: str, count: int) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        open_page(page, fake, route)
        if name == "job-trend":
            by_testid(page, "tab-chart").click()
        if name == "receipts":
            page.wait_for_selector("[data-testid=receipt-summary][data-done=true]")
        assert by_testid(page, testid).count() == count, (name, width)
        assert by_testid(page, "error").count() == 0
        # the document itself never scrolls sideways (wide tables scroll in their own box)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (name, width, overflow)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)


def test_cluster_shows_every_node_and_the_finality_of_the_last_blocks(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, "#/cluster")
    down = page.locator("[data-testid=node-row][data-peer='12D3KooWnode-3']")
    assert down.locator("[data-testid=node-live]").inner_text() == "down"
    assert "no answer within 3 s" in down.inner_text()
    assert by_testid(page, "mesh-summary").inner_text() == "5 nodes, 4 live, 4 validators."
    assert by_testid(page, "finality-bar").count() == 3  # 4 blocks: 3 deltas
    fake.push("block", {"height": 5, "hash": "a" * 64, "round": 0, "commit_round": 0,
                        "timestamp_ms": fake.canned.blocks[-1]["timestamp_ms"] + 2500, "tx_count": 0, "proposer": fake.canned.blocks[0]["proposer"]})
    playwright_sync.expect(page.locator("[data-testid=finality-bar]")).to_have_count(4)  # no eval under the CSP
    assert "head #5" in by_testid(page, "finality-summary").inner_text()


def test_router_works_from_the_keyboard(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, "")
    assert page.locator("main").get_attribute("data-page") == "cluster"
    page.keyboard.press("Tab")  # the skip link
    assert page.evaluate("document.activeElement.id") == "skip"
    for target in ("chain", "jobs", "datasets", "audit"):
        for _ in range(12):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.dataset.page") == target:
                break
        else:
            raise AssertionError(f"Tab never reached the {target} link")
        page.keyboard.press("Enter")
        page.wait_for_selector(f"main[data-page={target}][data-ready=true]")
        assert page.evaluate("location.hash") == f"#/{target}"
        # focus moves to the new page's heading; the nav marks the current page
        assert page.evaluate("document.activeElement.tagName") == "H1"
        assert page.locator("nav a[aria-current=page]").get_attribute("data-page") == target
        page.keyboard.press("Shift+Tab")  # back into the header, to walk on from there
        page.evaluate("document.querySelector('nav a[data-page=cluster]').focus()")


def test_a_block_event_adds_a_row_without_a_reload(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, "#/chain")
    assert by_testid(page, "block-row").count() == 4
    page.evaluate("window.__sameDocument = true")
    page.locator("#live-state[data-state='live']").wait_for()  # a locator wait: no eval under the CSP
    head = fake.canned.blocks[-1]
    fake.push("block", {"height": 99, "hash": "b" * 64, "round": 1, "commit_round": 1, "timestamp_ms": head["timestamp_ms"] + 1000,
                        "tx_count": 7, "proposer": head["proposer"]})
    row = page.locator("[data-testid=block-row][data-height='99']")
    row.wait_for()
    assert page.evaluate("window.__sameDocument") is True
    assert by_testid(page, "block-row").first.get_attribute("data-height") == "99"  # newest first
    assert row.locator("[data-testid=block-txs]").inner_text() == "7"
    # the proposer is named by its libp2p peer id, computed from the key in the browser
    assert row.locator("[data-testid=block-proposer]").inner_text().startswith(peer_id_from_public_key(bytes.fromhex(head["proposer"]))[:8])
    # the same block again changes nothing
    fake.push("block", {"height": 99, "hash": "b" * 64, "round": 1, "commit_round": 1, "timestamp_ms": 0, "tx_count": 7, "proposer": head["proposer"]})
    page.wait_for_timeout(200)
    assert page.locator("[data-testid=block-row][data-height='99']").count() == 1


def test_a_block_detail_page_shows_the_block_and_its_seals(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, "#/chain/2")
    block = fake.canned.blocks[1]
    assert by_testid(page, "block-receipts-root").inner_text() == block["receipts_root"]
    assert by_testid(page, "seal-row").count() == len(block["seals"])
    open_page(page, fake, "#/chain/12345")
    assert "block not found" in by_testid(page, "error").inner_text()


def test_a_job_event_changes_the_state_in_the_list_without_a_reload(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, "#/jobs")
    row = page.locator(f"[data-testid=job-row][data-job='{RUNNING_JOB}']")
    assert row.locator("[data-testid=job-state]").inner_text() == "running"
    assert "10 blocks" in row.locator("[data-testid=job-elapsed]").inner_text()  # submitted at 50, head 60
    assert "6 blocks" in page.locator(f"[data-testid=job-row][data-job='{TREND_JOB}'] [data-testid=job-elapsed]").inner_text()
    page.evaluate("window.__sameDocument = true")
    page.locator("#live-state[data-state='live']").wait_for()  # a locator wait: no eval under the CSP
    fake.push("job", {"id": RUNNING_JOB, "state": "verified", "previous": "running", "height": 61})
    page.wait_for_selector(f"[data-testid=job-row][data-job='{RUNNING_JOB}'][data-state=verified]")
    assert page.evaluate("window.__sameDocument") is True


def test_the_job_page_marks_the_late_node_and_follows_the_job_live(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, f"#/jobs/{RUNNING_JOB}")
    late = page.locator("[data-testid=timeline-event][data-late=true]")
    assert late.count() == 1 and late.locator("code").get_attribute("title") == LATE_PEER
    assert late.get_attribute("data-event") == "assigned"
    assert by_testid(page, "late-nodes").inner_text().startswith("Late: " + LATE_PEER)
    assert by_testid(page, "job-state").inner_text() == "running"
    assert by_testid(page, "result-pending").count() == 1
    page.evaluate("window.__sameDocument = true")
    page.locator("#live-state[data-state='live']").wait_for()  # a locator wait: no eval under the CSP
    job = next(j for j in fake.canned.jobs if j["id"] == RUNNING_JOB)
    job["state"] = "verified"
    try:
        fake.push("job", {"id": RUNNING_JOB, "state": "verified", "previous": "running", "height": 61})
        page.wait_for_selector("[data-testid=job-state]:text('verified')")
        assert page.evaluate("window.__sameDocument") is True
        assert by_testid(page, "tab-chart").count() == 1  # the verified trend result brought its chart
    finally:
        job["state"] = "running"


def test_a_trend_result_draws_one_line_per_group_with_slope_and_direction(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, f"#/jobs/{TREND_JOB}")
    tab = by_testid(page, "tab-chart")
    tab.focus()
    page.keyboard.press("Enter")
    charts = by_testid(page, "trend-chart")
    groups = sorted({row[0] for row in fake.canned.trend["rows"]})
    assert charts.count() == len(groups)
    lines = by_testid(page, "trend-series")
    assert lines.count() == len(groups)
    assert sorted(lines.evaluate_all("ls => ls.map(l => l.dataset.group)")) == groups
    for d in lines.evaluate_all("ls => ls.map(l => l.getAttribute('d'))"):
        assert d.startswith("M") and d.count("L") == 4  # five periods: one move, four segments
    assert by_testid(page, "trend-average").count() == len(groups)
    slopes = {s.get_attribute("data-group"): (s.get_attribute("data-direction"), s.inner_text()) for s in by_testid(page, "trend-slope").all()}
    expected = {row[0]: (row[7], row[6]) for row in fake.canned.trend["rows"]}
    for group, (direction, slope) in expected.items():
        assert slopes[group][0] == direction and slope in slopes[group][1], (group, slopes[group])
    assert "flat" in slopes["quince"][1]
    # the chart's axes have ticks and the legend names both series
    assert charts.first.locator(".y-axis text").count() >= 3
    assert "moving average" in charts.first.locator("[data-testid=chart-legend]").inner_text()


def test_the_result_table_sorts_from_the_keyboard(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, f"#/jobs/{TREND_JOB}")
    by_testid(page, "tab-timeline").focus()
    page.keyboard.press("End")  # tabs move with the arrow keys, Home and End
    assert page.evaluate("document.activeElement.dataset.testid") == "tab-result"
    table = by_testid(page, "result-table")
    assert table.is_visible()
    value_header = table.locator("th button", has_text="value")
    value_header.focus()
    page.keyboard.press("Enter")
    values = [float(v) for v in table.locator("tbody tr td:nth-child(4)").all_inner_texts()]
    assert values == sorted(values)
    page.keyboard.press("Enter")
    values = [float(v) for v in table.locator("tbody tr td:nth-child(4)").all_inner_texts()]
    assert values == sorted(values, reverse=True)
    assert table.locator("th[aria-sort=descending]").inner_text().startswith("value")
    links = [by_testid(page, f"download-{fmt}").get_attribute("href") for fmt in ("csv", "json", "parquet")]
    assert links == [f"/api/jobs/{TREND_JOB}/result.{fmt}" for fmt in ("csv", "json", "parquet")]


def test_receipts_are_verified_in_the_browser_and_a_tampered_one_says_which_part(page: Any, fake: FakeConsole, tmp_path: Path) -> None:
    if not (STATIC / "verify" / "bundle.js").exists():
        pytest.skip("verify/bundle.js (engineer K1's verifier) is not there yet")
    open_page(page, fake, f"#/receipts/{TREND_JOB}")
    page.wait_for_selector("[data-testid=receipt-summary][data-done=true]", timeout=20_000)
    statuses = by_testid(page, "receipt-status")
    oks = statuses.evaluate_all("s => s.map(x => x.dataset.ok)")
    assert oks == ["true", "true", "false", "true", "missing"]
    bad = statuses.nth(2)
    assert bad.get_attribute("data-part") == fake.canned.tampered_part
    assert f"{fake.canned.tampered_part} check failed" in bad.inner_text()
    assert "3 of 5 receipts verified" in by_testid(page, "receipt-summary").inner_text()
    # a bundle file from disk goes through the same verifier
    bundle = tmp_path / "tampered.bundle"
    bundle.write_bytes(fake.canned.tampered)
    page.get_by_label("Bundle file (from metanode receipt bundle)").set_input_files(str(bundle))
    checked = page.locator("section [data-testid=receipt-status]")
    checked.wait_for()
    assert checked.get_attribute("data-part") == fake.canned.tampered_part


def test_the_audit_box_runs_a_query_and_says_why_one_is_refused(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, "#/audit")
    box = page.get_by_label("SQL (one read-only SELECT)")
    box.fill("SELECT kind, count(*) FROM receipts GROUP BY kind")
    box.press("Control+Enter")
    by_testid(page, "audit-table").wait_for()
    assert by_testid(page, "audit-row").count() == 3
    box.fill("DROP TABLE receipts")
    by_testid(page, "audit-run").click()
    error = by_testid(page, "audit-error")
    error.wait_for()
    assert error.inner_text() == "The query was refused: only one read-only SELECT is allowed"


def test_an_upload_from_the_file_input_shows_its_own_progress(page: Any, fake: FakeConsole, tmp_path: Path) -> None:
    open_page(page, fake, "#/datasets")
    assert "unregistered" in page.locator("[data-testid=dataset-row]").nth(2).inner_text()
    csv = tmp_path / "Sales 2025.csv"
    csv.write_text("day,units\n2025-01-01,3\n2025-01-02,5\n")
    page.locator("#live-state[data-state='live']").wait_for()  # a locator wait: no eval under the CSP
    page.get_by_label("File").set_input_files(str(csv))
    assert page.get_by_label("Name").input_value() == "Sales-2025"
    assert page.get_by_label("Format").input_value() == "csv"
    by_testid(page, "upload-send").click()
    page.wait_for_selector("[data-testid=upload-status]:text('Stored Sales-2025')")
    progress = by_testid(page, "upload-progress")
    assert progress.evaluate("p => [p.value, p.max]") == [csv.stat().st_size] * 2
    query, body = fake.uploads[-1]
    assert body == csv.read_bytes() and query["name"] == ["Sales-2025"] and query["format"] == ["csv"]
    assert query["upload"][0]  # the page names its upload, so only its events move its bar


def test_a_file_dropped_on_the_zone_is_the_one_uploaded(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, "#/datasets")
    page.locator("#live-state[data-state='live']").wait_for()  # a locator wait: no eval under the CSP
    by_testid(page, "drop-zone").evaluate("""zone => {
        const files = new DataTransfer();
        files.items.add(new File(["k,v\\na,1\\n"], "dropped.jsonl", { type: "application/x-ndjson" }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: files, bubbles: true, cancelable: true }));
    }""")
    assert "dropped.jsonl" in by_testid(page, "upload-status").inner_text()
    assert page.get_by_label("Format").input_value() == "jsonl"
    by_testid(page, "upload-send").click()
    page.wait_for_selector("[data-testid=upload-status]:text('Stored dropped')")
    query, body = fake.uploads[-1]
    assert body == b"k,v\na,1\n" and query["format"] == ["jsonl"] and query["name"] == ["dropped"]


def test_unknown_ids_are_explained_not_crashed_on(page: Any, fake: FakeConsole) -> None:
    open_page(page, fake, "#/jobs/not-a-job")
    assert "is not a job id" in by_testid(page, "error").inner_text()
    open_page(page, fake, "#/receipts/" + "9" * 64)
    assert "no such route" in by_testid(page, "error").inner_text()


@pytest.fixture(scope="module", autouse=True)
def _clean_artifacts() -> None:
    """Screenshots are the last run's only."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
