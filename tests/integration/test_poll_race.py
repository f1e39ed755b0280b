"""PollRange under concurrent writers: the seen marker never swallows an update.

The partition holds more items than one internal scan page, and writers keep updating keys at
both ends of it while a client polls with the marker it was given each time. Every key's last
value must eventually reach the poller: an answer assembled from several reads (pages, or
re-reads after a wake-up) could carry a late write of one key with a marker that also covered
an earlier write of another key it never carried.
"""

from __future__ import annotations

import base64
import threading
import time

from tests.support.k2v import b64, insert_batch, ipath, put, token_of

PAGE = 1000  # garagekv.model.k2v.range.PAGE: the scan page of a range read
N_ITEMS = PAGE + 100
ROUNDS = 25


def sk(i: int) -> str:
    return f"k{i:05}"


def test_poll_range_sees_the_last_value_of_every_key_under_concurrent_writes(k2v, pk):
    for lo in range(0, N_ITEMS, 500):
        insert_batch(
            k2v, [{"pk": pk, "sk": sk(i), "ct": None, "v": b64("0")} for i in range(lo, min(lo + 500, N_ITEMS))]
        )
    hot = [sk(i) for i in (*range(0, 8), *range(N_ITEMS - 8, N_ITEMS))]  # both ends of the range
    final: dict[str, str] = {}
    seen: dict[str, set[str]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(keys: list[str]) -> None:
        try:
            for r in range(1, ROUNDS + 1):
                for key in keys:
                    value = f"{key}-{r}"
                    put(k2v, pk, key, value, token_of(k2v, pk, key))
                    final[key] = value
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def poller() -> None:
        try:
            r = k2v.json("POST", ipath(pk), {}, query="poll_range")
            assert r.status == 200, r.body
            marker = r.json()["seenMarker"]
            while not stop.is_set():
                r = k2v.json("POST", ipath(pk), {"seenMarker": marker, "timeout": 1}, query="poll_range")
                if r.status == 304:
                    continue
                assert r.status == 200, r.body
                body = r.json()
                marker = body["seenMarker"]
                for item in body["items"]:
                    vals = {base64.b64decode(v).decode() for v in item["v"] if v is not None}
                    seen.setdefault(item["sk"], set()).update(vals)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    poll_thread = threading.Thread(target=poller, daemon=True)
    poll_thread.start()
    writers = [threading.Thread(target=writer, args=(hot[i::4],), daemon=True) for i in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    assert not errors, errors
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(final[k] not in seen.get(k, ()) for k in hot):
        time.sleep(0.2)
    stop.set()
    poll_thread.join(timeout=10)
    assert not errors, errors
    missed = {k: final[k] for k in hot if final[k] not in seen.get(k, ())}
    assert not missed, f"PollRange never reported these last values: {missed}"
