"""Operating a node: the admin HTTP API, health, Prometheus metrics, key/bucket/layout/repair
operations shared by the CLI (over RPC) and the admin API, and storage statistics.

Documented in docs/admin-api.md and docs/operations.md.

Layer 7: may import every layer up to garagekv.api; never cli or garagekv.server.
"""
