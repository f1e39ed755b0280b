"""Generic replicated tables: local data and its Merkle to-do queue, replication strategies
(sharded by the ring, or a full copy), quorum reads and writes with read repair, Merkle tries,
anti-entropy sync, durable insert queues and tombstone GC.

Nothing here knows K2V: a table is a schema (``schema.TableSchema``) plus a replication strategy.

Layer 4: may import garagekv.util, db, net and rpc; never model or above.
See docs/architecture.md §2-§5.
"""
