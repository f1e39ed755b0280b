"""Shared foundations with no knowledge of the cluster: configuration, errors, canonical msgpack,
CRDTs, SigV4 primitives, logging, background workers, time and the event loop.

Layer 0: imports no other garagekv package (tests/unit/test_layering.py enforces the layers;
docs/architecture.md describes them).
"""
