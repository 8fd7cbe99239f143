#!/usr/bin/env python3
"""Create the keys and node configs of a four-validator metanode cluster.

    python3 deployments/make_cluster.py --out DIR [--namespace metanode]

It drives only the metanode command line (``metanode keys init`` for each
new random key, ``metanode keys show --json`` for its peer id) and the
standard library, so it runs wherever ``metanode`` is installed. DIR gets:

    keys/validator-N.key            the four identities (mode 0600; back them up, never commit them)
    genesis.toml                    the chain's genesis: the four public keys; identical on every node
    cluster.json                    peer ids, addresses, and the genesis file's SHA-256
    compose/compose.env             variables for deployments/compose/compose.yaml
    compose/validator-N/node.toml   each node's config (peers by compose service name)
    compose/validator-N/node.addr   its own address, for the health check
    compose/validator-N/data/       its data directory (bind-mounted at /var/lib/metanode)
    kubernetes/configmap.yaml       per-pod configs and addresses (peers by pod DNS name), the genesis
    kubernetes/secret.yaml          the keys as a Secret (mode 0600)

An existing, non-empty DIR is refused: keys are never overwritten.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VALIDATORS = 4
P2P_PORT = 7001
HOST_PORT_BASE = 7101  # compose publishes validator-N's p2p port on 127.0.0.1:7101+N
ROLES = ("validator", "scheduler")
# Names the committed manifests use (deployments/kubernetes/*.yaml, deployments/compose/compose.yaml).
STATEFULSET = "metanode-validator"
HEADLESS_SERVICE = "metanode-validator"
CONFIGMAP = "metanode-validator-config"
SECRET = "metanode-validator-keys"
COMPOSE_SERVICE = "validator-{index}"
# Paths inside the image (deployments/Dockerfile).
CONFIG_DIR = "/etc/metanode"
DATA_DIR = "/var/lib/metanode"
POLICIES_FILE = "/usr/share/metanode/policies.toml"
IMAGE_UID = 10001
DEFAULT_OUT = Path(__file__).resolve().parent / "cluster"  # ignored by deployments/.gitignore
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CHAIN_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # node/consensus/genesis.py


class GeneratorError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


@dataclass(frozen=True)
class Validator:
    index: int
    peer_id: str
    public_key: str

    @property
    def compose_service(self) -> str:
        return COMPOSE_SERVICE.format(index=self.index)

    @property
    def pod(self) -> str:
        return f"{STATEFULSET}-{self.index}"

    def compose_address(self) -> str:
        return f"/dns4/{self.compose_service}/tcp/{P2P_PORT}/p2p/{self.peer_id}"

    def kubernetes_address(self, namespace: str, cluster_domain: str) -> str:
        # A fully qualified name: libp2p resolves /dns4 with dnspython, which
        # does not apply resolv.conf's search domains.
        host = f"{self.pod}.{HEADLESS_SERVICE}.{namespace}.svc.{cluster_domain}"
        return f"/dns4/{host}/tcp/{P2P_PORT}/p2p/{self.peer_id}"

    def own_address(self) -> str:
        """How a health probe inside the same container reaches this node."""
        return f"/ip4/127.0.0.1/tcp/{P2P_PORT}/p2p/{self.peer_id}"


CAGE_COMMENT = """\
[cage]
# The daemon confines itself (Landlock + seccomp + rlimits) right after
# start-up. Docker >= 23 and containerd >= 1.6 allow those syscalls in their
# default seccomp profiles, so the confinement stays ON in containers; the
# host kernel must have Landlock (Linux >= 5.13 with "landlock" in its LSM
# list). Check a host with
#   docker run --rm --entrypoint metanode IMAGE cage check --policies {policies}
# Where a layer is missing the daemon refuses to start and names it: fix the
# host, or set service_policy = "none" to run unconfined (then the container
# is the only wall around a compromised parser). "gateway" is what "auto"
# picks for these roles; a node with the processing role also needs user
# namespaces, which default container profiles deny.
service_policy = "{service_policy}"
# The policies shipped in the image (a pip-installed package has no config/).
policies_file = "{policies}"
"""


def node_config(me: Validator, peers: list[str], *, name: str, where: str, service_policy: str) -> str:
    """The TOML config of validator ``name``; ``peers`` are the others' addresses."""
    peer_lines = "".join(f'    "{address}",\n' for address in peers)
    return f"""\
# {name} of a four-validator metanode cluster ({where}).
# Written by deployments/make_cluster.py. Mounted at {CONFIG_DIR}/node.toml;
# the key beside it is node.key (mode 0600, never leaves this node).
[node]
moniker = "{name}"
identity_key = "node.key"
data_dir = "{DATA_DIR}"
roles = {json.dumps(list(ROLES))}

[network]
# Every interface of the container; peers reach it by its DNS name.
listen = ["/ip4/0.0.0.0/tcp/{P2P_PORT}"]
# The other validators, by DNS name and peer id; redialled with capped backoff.
persistent_peers = [
{peer_lines}]
keepalive_interval = 5.0
keepalive_timeout = 10.0
dial_timeout = 5.0
redial_backoff_base = 0.5
redial_backoff_cap = 30.0

[consensus]
# The chain's genesis, beside this file: byte-identical on every validator.
genesis = "genesis.toml"

[log]
level = "info"
# One JSON object per line on stdout: what `docker logs` / `kubectl logs` collect.
format = "json"

{CAGE_COMMENT.format(service_policy=service_policy, policies=POLICIES_FILE)}"""


def genesis_toml(validators: list[Validator], *, chain_id: str, genesis_time_ms: int) -> str:
    """The genesis file (format: node/consensus/genesis.py) naming the four validators."""
    keys = "".join(f'    "{v.public_key}",  # {v.compose_service} {v.peer_id}\n' for v in validators)
    return f"""\
# Genesis of a four-validator metanode cluster, written by deployments/make_cluster.py.
# Every validator must run with this byte-identical file; compare
# `sha256sum genesis.toml` on each machine with the value in cluster.json.
chain_id = "{chain_id}"
genesis_time_ms = {genesis_time_ms}
block_period_ms = 1000
round_timeout_base_ms = 4000
round_timeout_cap_ms = 60000
validators = [
{keys}]

[limits]
max_block_bytes = 4194304
max_txs_per_block = 10000
max_timestamp_drift_ms = 5000
"""


def _yaml_block(text: str, indent: int) -> str:
    pad = " " * indent
    return "".join(f"{pad}{line}\n" if line else "\n" for line in text.splitlines())


def configmap_yaml(files: dict[str, str], namespace: str) -> str:
    """A ConfigMap holding ``files`` (name -> text) as literal blocks."""
    body = "".join(f"  {name}: |\n{_yaml_block(text, 4)}" for name, text in sorted(files.items()))
    return (
        "# Generated by deployments/make_cluster.py: one config and one address per pod.\n"
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {CONFIGMAP}\n  namespace: {namespace}\n"
        f"  labels:\n    app.kubernetes.io/name: metanode\n    app.kubernetes.io/component: validator\n"
        f"data:\n{body}"
    )


def secret_yaml(keys: dict[str, bytes], namespace: str) -> str:
    """A Secret holding the key files (name -> bytes), base64 encoded."""
    body = "".join(f"  {name}: {base64.b64encode(data).decode('ascii')}\n" for name, data in sorted(keys.items()))
    return (
        "# Generated by deployments/make_cluster.py. SECRET: the validator keys. Apply it,\n"
        "# keep an offline backup of ../keys/, and do not commit either.\n"
        f"apiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata:\n  name: {SECRET}\n  namespace: {namespace}\n"
        f"  labels:\n    app.kubernetes.io/name: metanode\n    app.kubernetes.io/component: validator\n"
        f"data:\n{body}"
    )


def _metanode_command(text: str | None) -> list[str]:
    if text:
        return shlex.split(text)
    if shutil.which("metanode"):
        return ["metanode"]
    return [sys.executable, "-m", "node"]


def _run(metanode: list[str], *args: str) -> str:
    try:
        done = subprocess.run([*metanode, *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise GeneratorError(f"cannot run {metanode[0]!r}; install metanode or pass --metanode") from None
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[-1]
        raise GeneratorError(f"`metanode {' '.join(args)}` failed: {reason}")
    return done.stdout


def create_keys(metanode: list[str], keys_dir: Path) -> list[Validator]:
    """A new random key per validator, via the metanode CLI."""
    validators = []
    for index in range(VALIDATORS):
        path = keys_dir / f"{COMPOSE_SERVICE.format(index=index)}.key"
        _run(metanode, "keys", "init", "--out", str(path))
        try:
            shown = json.loads(_run(metanode, "keys", "show", "--json", str(path)))
            validators.append(Validator(index, shown["peer_id"], shown["public_key"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise GeneratorError(f"`metanode keys show --json` printed something unexpected: {exc}") from None
    return validators


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    data = text.encode("utf-8") if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def generate(
    out: Path, *, namespace: str, cluster_domain: str, service_policy: str, metanode: list[str],
    chain_id: str = "metanode-cluster", genesis_time_ms: int | None = None,
) -> list[Validator]:
    """Write everything listed in the module docstring into ``out``."""
    if not _CHAIN_ID.match(chain_id):
        raise GeneratorError(f"--chain-id {chain_id!r}: expected 1-64 of [a-z0-9._-], starting with a letter or digit")
    if not _DNS_LABEL.match(namespace):
        raise GeneratorError(f"--namespace {namespace!r}: expected a DNS label (lowercase letters, digits, '-')")
    if not all(_DNS_LABEL.match(label) for label in cluster_domain.split(".")):
        raise GeneratorError(f"--cluster-domain {cluster_domain!r}: expected a DNS name such as cluster.local")
    if not re.fullmatch(r"[a-z0-9_-]+", service_policy):
        raise GeneratorError(f"--service-policy {service_policy!r}: expected a policy name or \"none\"")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GeneratorError(f"{out} exists and is not empty; refusing to overwrite keys (choose another --out)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_dir = out / "keys"
    keys_dir.mkdir(mode=0o700)
    validators = create_keys(metanode, keys_dir)
    genesis = genesis_toml(validators, chain_id=chain_id,
                           genesis_time_ms=int(time.time() * 1000) if genesis_time_ms is None else genesis_time_ms)
    _write(out / "genesis.toml", genesis)

    compose_dir = out / "compose"
    compose_dir.mkdir()
    # Containers run as the user who owns the key files (0600) and the data
    # directories, so that no one needs to chown anything. Root hands them
    # to the image's own non-root user instead of running the daemon as root.
    uid, gid = (os.getuid(), os.getgid()) if os.geteuid() != 0 else (IMAGE_UID, IMAGE_UID)
    for me in validators:
        node_dir = compose_dir / me.compose_service
        node_dir.mkdir()
        (node_dir / "data").mkdir(mode=0o700)
        peers = [v.compose_address() for v in validators if v is not me]
        _write(node_dir / "node.toml", node_config(me, peers, name=me.compose_service, where="Docker Compose", service_policy=service_policy))
        _write(node_dir / "node.addr", me.own_address() + "\n")
    _write(compose_dir / "compose.env", (
        "# docker compose --env-file THIS_FILE -f deployments/compose/compose.yaml up -d\n"
        f"METANODE_CLUSTER_DIR={out.resolve()}\nMETANODE_UID={uid}\nMETANODE_GID={gid}\n"
    ))

    kube_dir = out / "kubernetes"
    kube_dir.mkdir()
    files: dict[str, str] = {}
    for me in validators:
        peers = [v.kubernetes_address(namespace, cluster_domain) for v in validators if v is not me]
        files[f"{me.pod}.toml"] = node_config(me, peers, name=me.pod, where=f"Kubernetes, namespace {namespace}", service_policy=service_policy)
        files[f"{me.pod}.addr"] = me.own_address() + "\n"
    files["genesis.toml"] = genesis
    _write(kube_dir / "configmap.yaml", configmap_yaml(files, namespace))
    keys = {f"{v.pod}.key": (keys_dir / f"{v.compose_service}.key").read_bytes() for v in validators}
    _write(kube_dir / "secret.yaml", secret_yaml(keys, namespace), mode=0o600)

    _write(out / "cluster.json", json.dumps({
        "namespace": namespace,
        "chain_id": chain_id,
        "genesis_sha256": hashlib.sha256(genesis.encode("utf-8")).hexdigest(),
        "validators": [{
            "name": v.compose_service,
            "pod": v.pod,
            "peer_id": v.peer_id,
            "public_key": v.public_key,
            "compose_host_address": f"/ip4/127.0.0.1/tcp/{HOST_PORT_BASE + v.index}/p2p/{v.peer_id}",
            "compose_address": v.compose_address(),
            "kubernetes_address": v.kubernetes_address(namespace, cluster_domain),
        } for v in validators],
    }, indent=2) + "\n")
    if os.geteuid() == 0:
        for path in [keys_dir, *keys_dir.iterdir(), *(compose_dir / v.compose_service / "data" for v in validators)]:
            os.chown(path, IMAGE_UID, IMAGE_UID)
    return validators


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--namespace", default="metanode", help="Kubernetes namespace the cluster runs in (default: metanode)")
    parser.add_argument("--cluster-domain", default="cluster.local", help="the Kubernetes cluster's DNS domain (default: cluster.local)")
    parser.add_argument("--chain-id", default="metanode-cluster", help="chain id in the genesis file (default: metanode-cluster)")
    parser.add_argument("--service-policy", default="gateway", help='[cage] service_policy of every node (default: gateway; "none" runs unconfined)')
    parser.add_argument("--metanode", default=None, help='command that runs metanode (default: "metanode" on PATH, else this Python with -m node)')
    args = parser.parse_args(argv)
    try:
        validators = generate(args.out, namespace=args.namespace, cluster_domain=args.cluster_domain,
                              service_policy=args.service_policy, metanode=_metanode_command(args.metanode),
                              chain_id=args.chain_id)
    except (GeneratorError, OSError) as exc:
        print(f"make_cluster: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a {len(validators)}-validator cluster to {args.out}")
    for v in validators:
        print(f"  {v.compose_service}  {v.peer_id}")
    print(f"keys: {args.out / 'keys'} (back them up offline; never commit them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
