"""Node key files: created once, reloaded identically, refused when unsafe."""

from __future__ import annotations

import os
import stat

import pytest

from garagekv.net.identity import (
    NodeKey,
    NodeKeyError,
    load_or_create_node_key,
    node_number,
    parse_node_id,
    short_id,
    verify_signature,
)


def test_created_on_first_start_then_loaded(tmp_path):
    meta = tmp_path / "meta"
    key = load_or_create_node_key(meta)
    assert len(key.node_id) == 32
    assert (meta / "node_key").read_bytes() == key.seed()
    assert len(key.seed()) == 32
    assert (meta / "node_key.pub").read_bytes() == key.node_id
    assert stat.S_IMODE((meta / "node_key").stat().st_mode) == 0o600
    assert not list(meta.glob("*.tmp"))
    again = load_or_create_node_key(meta)
    assert again.node_id == key.node_id


def test_group_readable_key_is_refused(tmp_path):
    load_or_create_node_key(tmp_path)
    os.chmod(tmp_path / "node_key", 0o640)
    with pytest.raises(NodeKeyError, match="chmod 600"):
        load_or_create_node_key(tmp_path)


def test_bad_size_and_mismatched_pub_are_refused(tmp_path):
    load_or_create_node_key(tmp_path)
    (tmp_path / "node_key.pub").write_bytes(NodeKey.generate().node_id)
    with pytest.raises(NodeKeyError, match="does not match"):
        load_or_create_node_key(tmp_path)
    (tmp_path / "node_key.pub").unlink()
    key = load_or_create_node_key(tmp_path)  # a missing .pub is rewritten
    assert (tmp_path / "node_key.pub").read_bytes() == key.node_id
    (tmp_path / "node_key").write_bytes(b"short")
    with pytest.raises(NodeKeyError, match="32 bytes"):
        load_or_create_node_key(tmp_path)


def test_node_number_and_ids():
    node_id = bytes(range(32))
    assert node_number(node_id) == 0x0001020304050607
    assert short_id(node_id) == "0001020304050607"
    assert parse_node_id(node_id.hex()) == node_id
    with pytest.raises(ValueError, match="64 hexadecimal"):
        parse_node_id("abc")


def test_sign_and_verify():
    key = NodeKey.generate()
    sig = key.sign(b"data")
    assert verify_signature(key.node_id, sig, b"data")
    assert not verify_signature(key.node_id, sig, b"other")
    assert not verify_signature(NodeKey.generate().node_id, sig, b"data")
    assert not verify_signature(key.node_id, sig[:10], b"data")
    assert "NodeKey(" in repr(key) and key.seed().hex() not in repr(key)


def test_a_lost_key_is_not_replaced_by_a_new_identity(tmp_path):
    first = load_or_create_node_key(tmp_path)
    (tmp_path / "node_key").unlink()
    with pytest.raises(NodeKeyError, match="had an identity"):
        load_or_create_node_key(tmp_path)
    assert (tmp_path / "node_key.pub").read_bytes() == first.node_id  # the old id is kept


@pytest.mark.parametrize("where", ["metadata_dir is a file", "its parent is a file", "node_key is a directory"])
def test_unusable_paths_are_refused_with_a_message(tmp_path, where):
    if where == "metadata_dir is a file":
        target = tmp_path / "meta"
        target.write_bytes(b"x")
    elif where == "its parent is a file":
        (tmp_path / "parent").write_bytes(b"x")
        target = tmp_path / "parent" / "meta"
    else:
        target = tmp_path / "meta"
        (target / "node_key").mkdir(parents=True, mode=0o700)
    with pytest.raises(NodeKeyError) as e:
        load_or_create_node_key(target)
    assert str(tmp_path) in e.value.message
