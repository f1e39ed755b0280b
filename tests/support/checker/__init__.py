"""History checkers for K2V under faults.

- ``history``: single items written with and without causality tokens; no acknowledged write
  lost, read-your-writes through any node, superseded values never come back.
- ``sets``: InsertBatch of distinct keys; every acknowledged key is read back.
- ``watch``: PollRange / PollItem watchers see every item's final state, never go back.

Each checker returns ``Anomaly`` objects; ``docs/testing.md`` says what each one proves.
"""

from tests.support.checker.anomaly import Anomaly, count_kinds
from tests.support.checker.history import TOKEN, History, Key, Read, Workload, Write, final_check, read_item, write_item

__all__ = [
    "TOKEN",
    "Anomaly",
    "History",
    "Key",
    "Read",
    "Workload",
    "Write",
    "count_kinds",
    "final_check",
    "read_item",
    "write_item",
]
