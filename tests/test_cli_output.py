"""Small output promises of the CLI (issue 14): the demo numbers its steps
[1/N]..[N/N] and names data directories as they are on disk; shell
completion scripts are produced; `metanode mesh deploy` starts a local mesh
on the ports asked for and says how to stop it."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from node.cli import demo
from tests.support import METANODE, free_port, run_cli


def test_demo_numbers_its_steps_by_the_real_count(capsys: pytest.CaptureFixture[str]) -> None:
    for nodes, count in ((1, 4), (2, 5), (4, 5)):
        names = demo.demo_steps(nodes)
        assert len(names) == count
        step = demo.Steps(names)
        for i in range(count):
            step(f"step {i}")
        out = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in out] == [f"[{i}/{count}]" for i in range(1, count + 1)]
        with pytest.raises(AssertionError):
            step("one too many")


def test_demo_names_the_data_directory_on_disk(tmp_path) -> None:
    from node.testnet import layout

    layout.write_testnet(tmp_path, layout.plan_testnet(1, seed="demo-dirs"))
    data_dir = demo.data_dir_of(tmp_path, "node0")
    assert data_dir == tmp_path / "node0-data"


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _metanode_completion metanode"),
                                           ("zsh", "#compdef metanode"), ("fish", "complete --no-files --command metanode")])
def test_shell_completion_scripts_are_produced(shell: str, marker: str) -> None:
    done = subprocess.run(METANODE, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "_METANODE_COMPLETE": f"{shell}_source"})
    assert done.returncode == 0 and marker in done.stdout, done.stdout + done.stderr
    words = subprocess.run(METANODE, capture_output=True, text=True, timeout=60, env={
        **os.environ, "_METANODE_COMPLETE": "bash_complete", "COMP_WORDS": "metanode receipt verify --rec", "COMP_CWORD": "3"})
    assert words.stdout.split() == ["plain,--receipt-hash"]


def test_mesh_deploy_starts_a_local_mesh_on_the_ports_asked(tmp_path) -> None:
    port = free_port()
    directory = tmp_path / "mesh"
    with socket.socket() as taken:  # a busy port is refused before anything is written or started
        taken.bind(("127.0.0.1", port))
        busy = run_cli("mesh", "deploy", "--port", str(port), "--nodes", "1", "--dir", str(directory))
        assert busy.returncode == 2 and f"port {port} already in use" in busy.stderr and not directory.exists()
    deployed = run_cli("mesh", "deploy", "--port", str(port), "--nodes", "1", "--dir", str(directory), "--json", timeout=120)
    try:
        assert deployed.returncode == 0, deployed.stderr
        answer = json.loads(deployed.stdout)
        assert answer["genesis"] == str(directory / "genesis.toml")
        (node,) = answer["nodes"]
        assert node["address"].startswith(f"/ip4/127.0.0.1/tcp/{port}/p2p/") and node["pid"] > 0
        status = json.loads(run_cli("testnet", "status", "--dir", str(directory), "--json").stdout)
        assert [row["live"] for row in status] == [True]
        again = run_cli("mesh", "deploy", "--port", str(port + 1), "--nodes", "1", "--dir", str(directory))
        assert again.returncode == 2 and "choose another --dir" in again.stderr
        table = run_cli("mesh", "deploy", "--port", str(port), "--nodes", "1", "--dir", str(directory), timeout=120)
        assert table.returncode == 0, table.stderr  # the same mesh again: already running, nothing new started
        assert table.stdout.splitlines()[0].split() == ["node", "pid", "address"]
        assert f"stop it: metanode testnet down --dir {directory}" in table.stdout
    finally:
        stopped = run_cli("testnet", "down", "--dir", str(directory), "--json")
    assert json.loads(stopped.stdout) == {"node0": "stopped"}
