"""Node-to-node transport: node identity, the authenticated handshake, the encrypted record
layer, message framing, and ``NetApp``, which keeps one connection per peer and routes calls.

The wire format is described in docs/protocol.md.

Layer 2: may import garagekv.util and garagekv.db; never rpc or anything above.
"""
