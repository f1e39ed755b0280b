"""Transport failures, as the rest of the node sees them.

Everything a caller can observe from the network layer is a ``ServiceUnavailable`` (HTTP 503):
the request may or may not have taken effect on the peer, so retrying elsewhere is the right move.
``PeerProtocolError`` is internal: it means "this peer broke the protocol, drop the connection" and
never leaves the ``net`` package.
"""

from __future__ import annotations

from garagekv.util.errors import ServiceUnavailable


class NetError(ServiceUnavailable):
    """A peer could not be reached, or the connection to it was lost."""


class NotConnected(NetError):
    """No connection to the peer: the request was never sent, so it certainly had no effect
    there (unlike a lost connection or a timeout, after which the peer may have acted on it)."""


class HandshakeFailed(NetError):
    """The secure handshake did not complete (wrong secret, wrong node id, version, timeout...)."""


class RpcTimeout(NetError):
    """A remote call did not answer within its deadline (the request was cancelled remotely)."""


class PeerProtocolError(Exception):
    """The peer sent something the protocol does not allow; the connection must be closed."""
