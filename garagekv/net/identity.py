"""A node's long-term ed25519 identity: created once, stored in ``metadata_dir``, its public key is the node id.

The node id is what peers pin when they dial us (``<id>@<addr>``), and its first 8 bytes are the
node number used in DVVS version vectors, so the key must survive restarts and never be readable
by other local users.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from garagekv.util.errors import ConfigError

NODE_ID_LEN = 32
SIGNATURE_LEN = 64
KEY_FILE = "node_key"
PUB_FILE = "node_key.pub"


class NodeKeyError(ConfigError):
    """The node key files exist but cannot be used (bad size, unsafe permissions, mismatch)."""


@dataclass(frozen=True)
class NodeKey:
    """An ed25519 key pair; ``node_id`` is the raw 32-byte public key."""

    private: Ed25519PrivateKey
    node_id: bytes

    @classmethod
    def generate(cls) -> NodeKey:
        """A fresh key pair (also used as the throwaway identity of client-only dialers)."""
        return cls.from_seed(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        if len(seed) != 32:
            raise ValueError("an ed25519 seed is 32 bytes")
        private = Ed25519PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private, public)

    @property
    def hex_id(self) -> str:
        return self.node_id.hex()

    def seed(self) -> bytes:
        return self.private.private_bytes_raw()

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def __repr__(self) -> str:  # never print the private key by accident
        return f"NodeKey({short_id(self.node_id)})"


def verify_signature(node_id: bytes, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is ``node_id``'s ed25519 signature of ``data``."""
    if len(node_id) != NODE_ID_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(node_id).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def node_number(node_id: bytes) -> int:
    """The DVVS node number: the first 8 bytes of the node id, big-endian."""
    if len(node_id) < 8:
        raise ValueError("a node id is 32 bytes")
    return int.from_bytes(node_id[:8], "big")


def short_id(node_id: bytes) -> str:
    """The 16-hex-character prefix used in logs and error messages (as Garage prints ids)."""
    return node_id[:8].hex()


def parse_node_id(text: str) -> bytes:
    """Parse a 64-hex-character node id, with an actionable error."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != NODE_ID_LEN:
        raise ValueError(f"invalid node id {text!r}: expected 64 hexadecimal characters")
    return raw


def _check_private_mode(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeKeyError(
            f"node key file {path} is accessible by group/others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file + rename so a crash never leaves a half-written key."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_node_key(metadata_dir: str | os.PathLike[str]) -> NodeKey:
    """Load ``metadata_dir/node_key`` (creating the key pair on first start).

    The private file holds the raw 32-byte seed with mode 0600; ``node_key.pub`` the raw public key.
    A key readable by group/others is refused rather than silently fixed: the operator should know.
    So is a missing key where ``node_key.pub`` remains: the node had an identity, and a new one
    would orphan its role and data in the cluster (restore the key, or start afresh on purpose).
    A path that cannot be used (a file where a directory is expected, a read-only file system)
    is a ``NodeKeyError`` naming it, not a traceback.
    """
    try:
        return _load_or_create(Path(metadata_dir))
    except OSError as e:
        raise NodeKeyError(f"cannot use {e.filename or metadata_dir} for the node key: {e.strerror or e}") from None


def _load_or_create(directory: Path) -> NodeKey:
    if directory.exists() and not directory.is_dir():
        raise NodeKeyError(f"metadata_dir {directory} is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / KEY_FILE, directory / PUB_FILE
    if key_path.exists() and not key_path.is_file():
        raise NodeKeyError(f"{key_path} is not a file")
    if not key_path.exists():
        if pub_path.exists():
            raise NodeKeyError(
                f"{key_path} is missing but {pub_path} is there: this node had an identity that a new key "
                f"would replace, orphaning its role and data. Restore {key_path} (from a backup), or, to join "
                f"as a new node on purpose, empty {directory} first"
            )
        key = NodeKey.generate()
        _write_file(key_path, key.seed(), 0o600)
        _write_file(pub_path, key.node_id, 0o644)
        return key
    _check_private_mode(key_path)
    seed = key_path.read_bytes()
    if len(seed) != 32:
        raise NodeKeyError(f"node key file {key_path} should hold 32 bytes, found {len(seed)}")
    key = NodeKey.from_seed(seed)
    if not pub_path.exists():
        _write_file(pub_path, key.node_id, 0o644)
    elif pub_path.read_bytes() != key.node_id:
        raise NodeKeyError(f"{pub_path} does not match {key_path}; delete {pub_path} to regenerate it")
    return key
