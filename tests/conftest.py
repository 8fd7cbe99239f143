"""Shared fixtures (helpers live in tests/support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    return tmp_path


# How `make test` spreads tests over its two pytest-xdist workers
# (`--dist loadgroup`): tests that start daemon or testnet processes run on one
# worker, one after another, as they did before xdist: each such test sizes
# its deadlines for a cluster that has the machine's cores, and two clusters
# side by side on two cores made them flaky. Everything else (in-process
# tests, most of the suite by count) runs on the other worker beside them.
# Tests that build network namespaces, bridges or TUN devices, or list the
# host's namespaces to check for leftovers, also start processes, so they are
# in the same group: they share the host's network configuration, which no
# tmp_path separates. So do the browser tests: a headless Chromium takes a
# core, and beside a cluster it made honest clients miss their handshake deadlines.
_PROCESS_MARKERS = ("DaemonProcess", "processes.up(", "run_cli(", "run_manifest(", "subprocess.Popen(", "subprocess.run([sys.executable",
                    "mark.slow", "NetnsNetwork", "TunSwitch", "sync_playwright")
_process_modules: dict[Path, bool] = {}


def _starts_processes(path: Path) -> bool:
    if path not in _process_modules:
        text = path.read_text(errors="replace")
        _process_modules[path] = any(marker in text for marker in _PROCESS_MARKERS)
    return _process_modules[path]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_processes(item.path):
            item.add_marker(pytest.mark.xdist_group("processes"))
