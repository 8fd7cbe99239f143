"""deployments/: the image definition, the compose cluster, the Kubernetes
manifests, and the generator that writes their keys and node configs.

Docker is not available to the test suite, so the image is checked
statically; everything the generator writes is loaded with the daemon's own
config loader, and the Kubernetes manifests are validated against the
Kubernetes API schemas (kubernetes-validate, strict: unknown fields fail).
With root and unshare(1), the generated configs also run as a real
four-daemon cluster that finds its peers through /dns4 names.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate  # test extra: kubernetes-validate
import pytest
import trio
import yaml  # test extra: PyYAML

from node.base.config import load_config
from node.base.keys import Identity
from node.consensus.genesis import load_genesis

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deployments"
NAMESPACE = "ledger"  # not the default: it must reach every DNS name
CLUSTER_DOMAIN = "example.internal"
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_cluster", DEPLOY / "make_cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def run_generator(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "make_cluster.py"), "--out", str(out),
         "--metanode", f"{sys.executable} -m node", *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "cluster"
    done = run_generator(out, "--namespace", NAMESPACE, "--cluster-domain", CLUSTER_DOMAIN)
    assert done.returncode == 0, done.stderr
    return out


def validators(cluster: Path) -> list[dict[str, str]]:
    return json.loads((cluster / "cluster.json").read_text())["validators"]


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load_as_mounted(view: Path, config_text: str, key_bytes: bytes, genesis_text: str) -> Any:
    """What the daemon sees in its container: node.toml with node.key (0600)
    and genesis.toml beside it."""
    view.mkdir(parents=True)
    (view / "node.toml").write_text(config_text)
    (view / "genesis.toml").write_text(genesis_text)
    fd = os.open(view / "node.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    return load_config(view / "node.toml")


# -- generator ----------------------------------------------------------------

def test_generator_creates_four_private_keys_and_never_overwrites_them(cluster):
    nodes = validators(cluster)
    assert len(nodes) == 4
    for node in nodes:
        key = cluster / "keys" / f"{node['name']}.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert Identity.load(key).peer_id == node["peer_id"]
    assert len({n["peer_id"] for n in nodes}) == 4  # random keys, not labels
    assert (cluster / "kubernetes" / "secret.yaml").stat().st_mode & 0o777 == 0o600
    summary = json.loads((cluster / "cluster.json").read_text())
    genesis_bytes = (cluster / "genesis.toml").read_bytes()
    assert summary["genesis_sha256"] == hashlib.sha256(genesis_bytes).hexdigest()
    genesis = load_genesis(cluster / "genesis.toml")  # the consensus code's own loader
    assert set(genesis.validators) == {bytes.fromhex(n["public_key"]) for n in nodes}
    assert genesis.chain_id == summary["chain_id"] == "metanode-cluster"
    before = {p.name: p.read_bytes() for p in (cluster / "keys").iterdir()}
    again = run_generator(cluster)
    assert again.returncode == 2 and "refusing to overwrite keys" in again.stderr
    assert {p.name: p.read_bytes() for p in (cluster / "keys").iterdir()} == before


@pytest.mark.parametrize("option", [["--namespace", "Bad_NS"], ["--cluster-domain", "cluster..local"], ["--service-policy", "x y"], ["--chain-id", "Chain!"]])
def test_generator_rejects_bad_names_before_creating_anything(tmp_path, option):
    done = run_generator(tmp_path / "out", *option)
    assert done.returncode == 2 and option[0] in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_default_output_directory_is_git_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probe = gen.DEFAULT_OUT.relative_to(ROOT) / "keys" / "validator-0.key"
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(probe)], cwd=ROOT)
    assert done.returncode == 0, f"{probe} would be committable"


# -- image ----------------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile_builds_with_gmp_and_runs_the_daemon_as_non_root():
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert arg and re.fullmatch(r"python:3\.11[\w.-]*-bookworm", arg.group(1))
    stages = dockerfile_stages()
    build, final = stages[0], stages[-1]
    build_runs = " ".join(args for ins, args in build if ins == "RUN")
    assert "libgmp-dev" in build_runs and "gcc" in build_runs and re.search(r"pip install \.(\s|$)", build_runs)
    last = {ins: args for ins, args in final}  # the final value of each instruction
    user = last["USER"].split(":")[0]
    assert user not in ("root", "0") and int(user) == gen.IMAGE_UID
    assert json.loads(last["ENTRYPOINT"]) == ["metanode", "daemon", "start", "--config", f"{gen.CONFIG_DIR}/node.toml"]
    assert gen.DATA_DIR in json.loads(last["VOLUME"])
    assert last["EXPOSE"] == f"{gen.P2P_PORT}/tcp"
    copies = [args.split() for ins, args in final if ins == "COPY" and not args.startswith("--from")]
    assert ["config/policies.toml", gen.POLICIES_FILE] in copies  # the file every node config names
    # The build context is the repository root: each file COPY needs is let through.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for stage in stages:
        for ins, args in stage:
            if ins == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert (ROOT / source).exists(), source
                    assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def test_cli_works_as_the_image_installs_it(cluster):
    """The image installs metanode with `pip install .`: no editable-install hook runs at
    start-up. Run the console script's code the same way (-S: no .pth files)."""
    import site

    script = "import sys; from node.cli.main import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *site.getsitepackages()])}
    key = cluster / "keys" / "validator-0.key"
    done = subprocess.run([sys.executable, "-S", "-c", script, "keys", "show", "--json", str(key)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=DEPLOY)
    assert done.returncode == 0, done.stderr[-500:]
    assert json.loads(done.stdout)["peer_id"] == validators(cluster)[0]["peer_id"]


# -- compose ----------------------------------------------------------------------

def _substitute(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if name in env:
            return env[name]
        assert match.group(2) == ":-", f"${{{name}}} has no value in compose.env and no default"
        return default
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, text)


def test_compose_cluster_mounts_each_node_its_own_config_key_and_data(cluster, tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    env = dict(line.split("=", 1) for line in (cluster / "compose" / "compose.env").read_text().splitlines() if line and not line.startswith("#"))
    assert Path(env["METANODE_CLUSTER_DIR"]) == cluster.resolve()
    nodes = {n["name"]: n for n in validators(cluster)}
    assert set(compose["services"]) == set(nodes)
    sources: list[str] = []
    for name, service in compose["services"].items():
        mounts = {}
        for volume in service["volumes"]:
            source, target, *mode = _substitute(volume, env).split(":")
            mounts[target] = (Path(source), mode)
            sources.append(source)
        config, key, addr, genesis, data = (mounts[p] for p in (
            f"{gen.CONFIG_DIR}/node.toml", f"{gen.CONFIG_DIR}/node.key", f"{gen.CONFIG_DIR}/node.addr",
            f"{gen.CONFIG_DIR}/genesis.toml", gen.DATA_DIR))
        assert config[1] == key[1] == addr[1] == genesis[1] == ["ro"] and data[1] == []
        assert genesis[0] == cluster.resolve() / "genesis.toml"  # one file for all: byte-identical
        assert data[0].is_dir()
        # The container runs as the key's owner: otherwise a 0600 key is unreadable.
        user, group = _substitute(service["user"], env).split(":")
        assert int(user) == key[0].stat().st_uid != 0 and int(group) == key[0].stat().st_gid
        assert data[0].stat().st_uid == int(user)
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert "node_status" in service["healthcheck"]["test"][1] and f"{gen.CONFIG_DIR}/node.addr" in service["healthcheck"]["test"][1]
        assert service["build"]["dockerfile"] == "deployments/Dockerfile"
        assert (DEPLOY / "compose" / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        host_port = int(service["ports"][0].split(":")[1])
        assert nodes[name]["compose_host_address"] == f"/ip4/127.0.0.1/tcp/{host_port}/p2p/{nodes[name]['peer_id']}"

        loaded = load_as_mounted(tmp_path / name, config[0].read_text(), key[0].read_bytes(), genesis[0].read_text())
        assert load_genesis(loaded.consensus["genesis"]).validators == load_genesis(genesis[0]).validators
        assert Identity.load(loaded.identity_key).peer_id == nodes[name]["peer_id"]
        assert addr[0].read_text().strip() == f"/ip4/127.0.0.1/tcp/{gen.P2P_PORT}/p2p/{nodes[name]['peer_id']}"
        assert loaded.network["listen"] == [f"/ip4/0.0.0.0/tcp/{gen.P2P_PORT}"]
        assert sorted(loaded.network["persistent_peers"]) == sorted(
            f"/dns4/{other}/tcp/{gen.P2P_PORT}/p2p/{n['peer_id']}" for other, n in nodes.items() if other != name)
        assert str(loaded.data_dir) == gen.DATA_DIR and str(loaded.cage["policies_file"]) == gen.POLICIES_FILE
        assert loaded.cage["service_policy"] == "gateway" and loaded.log["format"] == "json"
    genesis_file = str(cluster.resolve() / "genesis.toml")
    assert len(set(sources) - {genesis_file}) == len(sources) - len(nodes)  # nothing else shared


# -- Kubernetes -------------------------------------------------------------------

def kubernetes_documents(cluster: Path) -> list[tuple[str, dict[str, Any]]]:
    files = sorted((DEPLOY / "kubernetes").glob("*.yaml")) + sorted((cluster / "kubernetes").glob("*.yaml"))
    return [(path.name, doc) for path in files for doc in yaml_docs(path)]


def test_every_kubernetes_manifest_validates_against_the_api_schemas(cluster):
    documents = kubernetes_documents(cluster)
    kinds = sorted(doc["kind"] for _, doc in documents)
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Secret", "Service", "StatefulSet"]
    for name, doc in documents:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} {doc['kind']} (Kubernetes {version}): {'.'.join(map(str, exc.path))}: {exc.message}")
    # Strict schemas are in force: a misspelt field is refused.
    statefulset = next(doc for _, doc in documents if doc["kind"] == "StatefulSet")
    broken = json.loads(json.dumps(statefulset))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def _manifest(cluster: Path, kind: str) -> dict[str, Any]:
    return next(doc for _, doc in kubernetes_documents(cluster) if doc["kind"] == kind)


def test_statefulset_is_confined_persistent_and_probed_through_node_status(cluster):
    sts, service = _manifest(cluster, "StatefulSet"), _manifest(cluster, "Service")
    pod = sts["spec"]["template"]["spec"]
    assert sts["metadata"]["name"] == gen.STATEFULSET and sts["spec"]["replicas"] == gen.VALIDATORS
    assert sts["spec"]["serviceName"] == service["metadata"]["name"] == gen.HEADLESS_SERVICE
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"] == sts["spec"]["template"]["metadata"]["labels"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == gen.IMAGE_UID
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (daemon,) = pod["containers"]
    for container in [*pod["initContainers"], daemon]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert "command" not in daemon and "args" not in daemon  # the image's entrypoint
    assert daemon["ports"][0]["containerPort"] == gen.P2P_PORT and service["spec"]["ports"][0]["port"] == gen.P2P_PORT
    mounts = {m["mountPath"]: m for m in daemon["volumeMounts"]}
    assert mounts[gen.DATA_DIR]["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert mounts[gen.CONFIG_DIR]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[gen.CONFIG_DIR]["name"]]["emptyDir"]["medium"] == "Memory"  # the key never hits the disk
    assert volumes["keys"]["secret"] == {"secretName": gen.SECRET, "defaultMode": 0o400}
    assert volumes["configs"]["configMap"]["name"] == gen.CONFIGMAP
    assert "keys" not in {m["name"] for m in daemon["volumeMounts"]}  # only the init step sees the Secret
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = daemon[probe]["exec"]["command"]
        assert "metanode rpc node_status" in command[-1] and f"{gen.CONFIG_DIR}/node.addr" in command[-1] and "--timeout 5" in command[-1]
        assert daemon[probe]["timeoutSeconds"] > 5
    assert _manifest(cluster, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_init_step_gives_each_pod_a_loadable_config_and_a_0600_key(cluster, tmp_path):
    """Runs the StatefulSet's init script against the generated ConfigMap and
    Secret laid out as kubelet mounts them (fsGroup makes the key 0440)."""
    sts = _manifest(cluster, "StatefulSet")
    configmap, secret = _manifest(cluster, "ConfigMap"), _manifest(cluster, "Secret")
    assert configmap["metadata"]["namespace"] == secret["metadata"]["namespace"] == NAMESPACE
    assert configmap["metadata"]["name"] == gen.CONFIGMAP and secret["metadata"]["name"] == gen.SECRET
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:2] == ["/bin/sh", "-ec"]
    nodes = {n["pod"]: n for n in validators(cluster)}
    assert set(nodes) == {f"{gen.STATEFULSET}-{i}" for i in range(gen.VALIDATORS)}
    for pod, node in [*nodes.items(), (f"{gen.STATEFULSET}-{gen.VALIDATORS}", None)]:
        root = tmp_path / pod
        script = init["command"][2]
        paths = {}
        for mount in sorted(init["volumeMounts"], key=lambda m: -len(m["mountPath"])):
            paths[mount["name"]] = root / mount["name"]
            paths[mount["name"]].mkdir(parents=True)
            script = script.replace(mount["mountPath"], str(paths[mount["name"]]))
        for name, text in configmap["data"].items():
            (paths["configs"] / name).write_text(text)
        for name, data in secret["data"].items():
            (paths["keys"] / name).write_bytes(base64.b64decode(data))
            (paths["keys"] / name).chmod(0o440)
        done = subprocess.run(["/bin/sh", "-ec", script], env={"POD_NAME": pod, "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30)
        if node is None:  # a fifth replica has nothing to run with, and says so
            assert done.returncode != 0 and f"{pod}.toml" in done.stderr
            continue
        assert done.returncode == 0, done.stderr
        files = paths["node-files"]
        assert (files / "node.key").stat().st_mode & 0o777 == 0o600
        loaded = load_config(files / "node.toml")
        peer_id = Identity.load(loaded.identity_key).peer_id
        assert peer_id == node["peer_id"]
        assert (files / "node.addr").read_text().strip() == f"/ip4/127.0.0.1/tcp/{gen.P2P_PORT}/p2p/{peer_id}"
        assert loaded.consensus["genesis"] == files / "genesis.toml"
        assert (files / "genesis.toml").read_bytes() == (cluster / "genesis.toml").read_bytes()
        expected_peers = [
            f"/dns4/{other}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}/tcp/{gen.P2P_PORT}/p2p/{n['peer_id']}"
            for other, n in nodes.items() if other != pod
        ]
        assert sorted(loaded.network["persistent_peers"]) == sorted(expected_peers)
        assert node["kubernetes_address"] == f"/dns4/{pod}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}/tcp/{gen.P2P_PORT}/p2p/{peer_id}"


# -- the generated cluster, running ---------------------------------------------
# Four real daemons in a private network and mount namespace (root + unshare),
# with /etc/resolv.conf pointing at a small DNS server that resolves each
# compose service name to its own loopback address, as Docker's DNS would.

MESH_TIMEOUT_S = 45


def _loopback(index: int) -> str:
    return f"127.0.0.{11 + index}"


def _serve_dns(sock: socket.socket) -> None:
    import dns.message
    import dns.rcode
    import dns.rrset

    while True:
        data, peer = sock.recvfrom(4096)
        query = dns.message.from_wire(data)
        answer = dns.message.make_response(query)
        question = query.question[0]
        match = re.fullmatch(r"validator-(\d+)\.", question.name.to_text())
        if match is None:
            answer.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == 1:  # A; other types get an empty answer
            answer.answer.append(dns.rrset.from_text(question.name, 5, "IN", "A", _loopback(int(match.group(1)))))
        sock.sendto(answer.to_wire(), peer)


async def _wait_for_mesh(addresses: list[str], wanted: list[set[str]], procs: list[subprocess.Popen[bytes]]) -> tuple[list[set[str]], list[Any]]:
    """Poll net_peers until every node is connected to every other; then node_status."""
    from node.p2p.client import call_node

    async def ask(address: str, method: str) -> Any:
        try:
            return await call_node(address, method, timeout=5)
        except Exception:  # not up yet
            return None

    seen: list[set[str]] = [set() for _ in addresses]
    with trio.move_on_after(MESH_TIMEOUT_S):
        while any(p.poll() is None for p in procs):
            seen = [{p["peer_id"] for p in (await ask(a, "net_peers") or [])} for a in addresses]
            if all(w <= s for w, s in zip(wanted, seen)):
                break
            await trio.sleep(0.5)
    return seen, [await ask(a, "node_status") for a in addresses]


def _mesh_driver(cluster: Path, work: Path) -> dict[str, Any]:
    """Runs inside `unshare --mount --net`: start the four compose nodes, wait
    for a full mesh, stop them. Only the addresses a single network namespace
    cannot share are changed: each node listens on its own loopback address
    instead of 0.0.0.0, and data and policies live outside the image paths."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    (work / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    subprocess.run(["mount", "--bind", str(work / "resolv.conf"), "/etc/resolv.conf"], check=True)
    dns_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_socket.bind(("127.0.0.1", 53))
    threading.Thread(target=_serve_dns, args=(dns_socket,), daemon=True).start()
    nodes = validators(cluster)
    procs, addresses = [], []
    for i, node in enumerate(nodes):
        text = (cluster / "compose" / node["name"] / "node.toml").read_text()
        text = text.replace(f'"{gen.DATA_DIR}"', f'"{work / node["name"] / "data"}"')
        text = text.replace(gen.POLICIES_FILE, str(ROOT / "config" / "policies.toml"))
        text = text.replace(f"/ip4/0.0.0.0/tcp/{gen.P2P_PORT}", f"/ip4/{_loopback(i)}/tcp/{gen.P2P_PORT}")
        key = (cluster / "keys" / f"{node['name']}.key").read_bytes()
        config = load_as_mounted(work / node["name"], text, key, (cluster / "genesis.toml").read_text()).path
        log = open(work / node["name"] / "daemon.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "node", "daemon", "start", "--config", str(config)], stdout=log, stderr=log, cwd=ROOT))
        addresses.append(f"/ip4/{_loopback(i)}/tcp/{gen.P2P_PORT}/p2p/{node['peer_id']}")

    wanted = [{n["peer_id"] for n in nodes} - {node["peer_id"]} for node in nodes]
    try:
        seen, statuses = trio.run(_wait_for_mesh, addresses, wanted, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:  # a daemon that ignores SIGTERM fails the test
                proc.kill()
                codes.append(proc.wait())
    return {
        "meshed": all(w <= s for w, s in zip(wanted, seen)),
        "cage": [s and s["cage"] for s in statuses],
        "exit_codes": codes,
        "logs": [(work / n["name"] / "daemon.log").read_text()[-2000:] for n in nodes],
    }


@pytest.mark.netns
def test_generated_compose_cluster_meshes_through_dns_names_under_confinement(cluster, tmp_path):
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "ip", "mount")):
        pytest.skip("needs root, unshare, ip and mount for a private network namespace")
    from node.cage.layers import probe_host

    missing = {"landlock", "seccomp"} - probe_host().layers
    if missing:
        pytest.skip(f"this host cannot apply the shipped service policy: no {', '.join(sorted(missing))}")
    done = subprocess.run(
        ["unshare", "--mount", "--net", sys.executable, __file__, "--mesh", str(cluster), str(tmp_path)],
        capture_output=True, text=True, timeout=MESH_TIMEOUT_S + 90, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["meshed"], "\n".join(result["logs"])
    for cage in result["cage"]:
        assert cage["policy"] == "gateway" and {"landlock", "seccomp"} <= set(cage["layers"]) and not cage["missing"]
    assert result["exit_codes"] == [0, 0, 0, 0], "\n".join(result["logs"])


if __name__ == "__main__" and sys.argv[1:2] == ["--mesh"]:
    print(json.dumps(_mesh_driver(Path(sys.argv[2]), Path(sys.argv[3]))))
