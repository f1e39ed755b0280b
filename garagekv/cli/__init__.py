"""The ``garagekv`` command: run a node, a local dev cluster, operator commands over RPC, the
``garagekv k2v`` client command line and ``garagekv bench``.

The top layer: may import any garagekv package, garagekv.server included; nothing imports it.
"""
