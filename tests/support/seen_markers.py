"""What a seen marker may claim: an assertion shared by the K2V store and poll tests.

First written for the store's PollRange tests (``tests/unit/test_k2v_store.py``); the range and
index poll tests (``test_k2v_poll_ranges.py``, ``test_k2v_poll_index.py``) check their markers with it too.
"""

from __future__ import annotations

from garagekv.model.k2v.seen import RangeSeenMarker


def claims_only_what_it_answered(before: RangeSeenMarker | None, answer, after: RangeSeenMarker, now) -> None:
    """Every stored item that the answer did not carry as it is stored must still be new to ``after``.

    (When it was already old news to ``before`` it does not matter.)
    """
    answered = {i.sort_key: i.encode() for i in answer}
    for item in now:
        if answered.get(item.sort_key) == item.encode():
            continue
        if before is not None and not before.is_new_item(item):
            continue
        assert after.is_new_item(item), f"the marker claims {item.sort_key!r} but the answer did not carry it"
