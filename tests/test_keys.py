"""Identities: key files, peer ids, domain-tagged signatures."""

from __future__ import annotations

import os
import stat

import pytest
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID

from node.base.keys import Identity, KeyFileError, peer_id_from_public_key, public_key_from_peer_id, verify


def test_peer_id_matches_libp2p():
    for label in ("a", "b", "c"):
        identity = Identity.from_label(label)
        expected = ID.from_pubkey(Ed25519PublicKey.from_bytes(identity.public_key)).to_base58()
        assert identity.peer_id == expected
        assert public_key_from_peer_id(expected) == identity.public_key


def test_key_file_round_trip_and_mode(tmp_path):
    identity = Identity.generate()
    path = tmp_path / "k.key"
    identity.write(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.load(path).public_key == identity.public_key


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k.key"
    Identity.generate().write(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        Identity.generate().write(path)
    assert path.read_bytes() == before


def test_refuses_readable_key(tmp_path):
    path = tmp_path / "k.key"
    Identity.generate().write(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Identity.load(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ('type = "rsa"\nseed = "00"\n', "ed25519"),
        ('type = "ed25519"\nseed = "00"\n', "64 hex"),
        ('type = "ed25519"\nseed = "' + "zz" * 32 + '"\n', "not hex"),
        ('type = "ed25519"\nseed = "' + "00" * 32 + '"\nextra = 1\n', "unknown"),
        ("not toml [[[", "not a metanode key file"),
    ],
)
def test_malformed_key_files(tmp_path, text, match):
    path = tmp_path / "k.key"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match=match):
        Identity.load(path)


def test_missing_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="no such key file"):
        Identity.load(tmp_path / "absent.key")


def test_signatures_are_domain_separated():
    identity = Identity.from_label("signer")
    sig = identity.sign("metanode/block/v1", b"msg")
    assert verify(identity.public_key, "metanode/block/v1", b"msg", sig)
    assert not verify(identity.public_key, "metanode/tx/v1", b"msg", sig)
    assert not verify(identity.public_key, "metanode/block/v1", b"msh", sig)
    assert not verify(Identity.from_label("other").public_key, "metanode/block/v1", b"msg", sig)
    assert not verify(identity.public_key, "metanode/block/v1", b"msg", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify(b"short", "t", b"m", sig)


def test_repr_hides_seed():
    identity = Identity.from_label("x")
    assert identity.seed.hex() not in repr(identity)


def test_peer_id_rejects_non_ed25519():
    with pytest.raises(ValueError):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    with pytest.raises(ValueError):
        peer_id_from_public_key(b"\x00" * 31)
