"""The node's LMDB environment (``env``) and its single group-commit writer thread (``writer``).

Every write of a node goes through ``writer.GroupCommitWriter``; the trees and their key
formats are listed in docs/storage.md and docs/architecture.md §4.

Layer 1: may import only garagekv.util.
"""
