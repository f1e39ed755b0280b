"""Item size limits across real nodes: a refused batch writes nothing on any coordinator, a
replica's big merged items still travel, and an entry too big for any RPC message (older data)
never holds anti-entropy: it is reported and the rest of its partition syncs
(docs/k2v-compat.md limits, docs/operations.md 'A partition that cannot sync')."""

from __future__ import annotations

import base64

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.k2v.item import DvvsEntry, K2VItem
from garagekv.model.k2v.stored import BucketNumbers, ItemStoredForm
from garagekv.table.range_sums import META
from tests.support import K2VHttp, NodeProcess, wait_for
from tests.support.cluster import BUCKET, FAST_SYNC, all_up, apply_layout, bucket_client

MiB = 1024 * 1024


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def start(make_cluster, n: int, rf: int, k2v_extra: str = "") -> tuple[list[NodeProcess], K2VHttp]:
    nodes = make_cluster(n, rf=rf, extra=FAST_SYNC, k2v_extra=k2v_extra)
    for node in nodes:
        wait_for(lambda node=node: all_up(node, n))
    apply_layout(nodes[0], nodes, nodes)
    return nodes, bucket_client(nodes[0])


def put(client: K2VHttp, pk: str, sk: str, value: bytes) -> None:
    r = client.request("PUT", f"/{BUCKET}/{pk}", f"sort_key={sk}", value)
    assert r.status == 204, (r.status, r.body[:300])


def status_of(client: K2VHttp, pk: str, sk: str) -> int:
    return client.request("GET", f"/{BUCKET}/{pk}", f"sort_key={sk}", headers={"Accept": "application/json"}).status


def test_batch_over_several_coordinators_is_refused_before_any_writes(make_cluster):
    """rf=1 on 3 nodes: a batch's partitions have different coordinators; one item too big
    refuses the whole batch, and no coordinator has written its part."""
    _, client = start(make_cluster, 3, rf=1, k2v_extra="max_item_bytes = 4096")
    put(client, "pk-0", "big", b"a" * 3000)
    items = [{"pk": f"pk-{i}", "sk": "s", "ct": None, "v": b64(b"ok")} for i in range(1, 20)]
    items.append({"pk": "pk-0", "sk": "big", "ct": None, "v": b64(b"b" * 3000)})
    r = client.json("POST", f"/{BUCKET}", items)
    assert r.status == 413 and r.json()["code"] == "EntityTooLarge", (r.status, r.body)
    assert [status_of(client, f"pk-{i}", "s") for i in range(1, 20)] == [404] * 19
    r = client.json("POST", f"/{BUCKET}", [{"partitionKey": "pk-0"}], query="search")
    assert [len(i["v"]) for i in r.json()[0]["items"]] == [1]  # still one value


def test_big_merged_items_for_one_replica_and_big_ranges_go_through(make_cluster):
    """Three 6 MiB items get a small concurrent value each in one InsertBatch: each replica's
    update (18 MiB of merged items) is over a frame, and so is a range read of them."""
    nodes, client = start(make_cluster, 3, rf=3)
    big = {f"s{i}": bytes([65 + i]) * (6 * MiB) for i in range(3)}
    for sk, value in big.items():
        put(client, "pk", sk, value)
    r = client.json("POST", f"/{BUCKET}", [{"pk": "pk", "sk": sk, "ct": None, "v": b64(b"x")} for sk in big])
    assert r.status == 204, (r.status, r.body[:300])
    for node in nodes:
        via = K2VHttp(node.endpoint, client.access_key, client.secret_key)
        r = via.json("POST", f"/{BUCKET}", [{"partitionKey": "pk"}], query="search")
        assert r.status == 200, (r.status, r.body[:300])
        res = r.json()[0]
        assert res["more"] is False
        assert {i["sk"]: sorted(len(v) for v in i["v"]) for i in res["items"]} == {
            sk: sorted([len(b64(b"x")), len(b64(v))]) for sk, v in big.items()
        }


def write_behind_its_back(node: NodeProcess, pk: str, sk: str, extra: int, new: int) -> int:
    """Straight into a stopped node's database: give its copy of item (pk, sk) two more values
    of ``extra`` bytes (an item as older versions could store) and add ``new`` small items to
    the same partition; returns the big item's size. Dropping the range sums' meta record makes
    the node rebuild its sums at start, so they count these entries."""
    db = Database(node.metadata_dir, fsync=False)
    writer = GroupCommitWriter(db)
    try:
        data, sums = db.tree("k2v_item:data"), db.tree("k2v_item:sums")
        form = ItemStoredForm(BucketNumbers(db))  # the node keeps items packed
        with db.read() as txn:
            found = [K2VItem.decode(form.unpack(k, v)) for k, v in txn.cursor(db=data)]
        item = next(i for i in found if (i.partition_key, i.sort_key) == (pk, sk))
        item.items[12345] = DvvsEntry(0, [(1, b"y" * extra), (2, b"z" * extra)])
        others = [K2VItem(item.bucket_id, pk, f"only-here-{n}", {12345: DvvsEntry(0, [(1, b"v")])}) for n in range(new)]

        def write(tx) -> None:
            for entry in (item, *others):
                tx.put(data, entry.tree_key(), entry.encode())
            tx.delete(sums, META)

        writer.run_sync(write)
        return len(item.encode())
    finally:
        writer.close()
        db.close()


def local_items(node: NodeProcess) -> dict:
    return node.admin("table.local_digest", {"table": "k2v_item"})["tables"]["k2v_item"]


def sync_worker(node: NodeProcess) -> dict:
    return next(w for w in node.admin("worker.list")["workers"] if w["name"] == "k2v_item sync")


def test_an_entry_too_big_to_sync_is_reported_and_the_rest_of_its_partition_syncs(make_cluster):
    (a, b), client = start(make_cluster, 2, rf=2)
    put(client, "pk", "huge", b"h")
    wait_for(lambda: local_items(a)["items"] == local_items(b)["items"] == 1)
    b.stop()
    assert write_behind_its_back(b, "pk", "huge", 9 * MiB, new=5) > 17 * MiB  # over the 16 MiB frame
    b.start()
    wait_for(lambda: all_up(b, 2) and local_items(b)["merkle_todo"] == 0)
    b.cli("repair", "--yes", "tables")
    # b pushes a the 5 entries it lacks; the big one stays behind, reported, and the full sync
    # completes instead of failing on that partition forever.
    wait_for(lambda: local_items(a)["items"] == 6, timeout=60)
    wait_for(lambda: sync_worker(b)["full_syncs"] >= 1 and sync_worker(b).get("unsyncable"), timeout=60)
    w = sync_worker(b)
    assert "1 entry over" in w["unsyncable"] and "not synced" in w["unsyncable"], w
    assert "cannot sync partition" in b.cli("worker", "list").stdout
    # The remedy docs/operations.md gives: read it through a node that stores it, then delete it
    # with its causality token (a write that shrinks an item is allowed); the report clears.
    b_client = K2VHttp(b.endpoint, client.access_key, client.secret_key)
    r = b_client.request("GET", f"/{BUCKET}/pk", "sort_key=huge", headers={"Accept": "application/json"})
    assert r.status == 200 and len(r.json()) == 3, (r.status, r.body[:200])
    token = r.header("X-Garage-Causality-Token")
    r = b_client.request("DELETE", f"/{BUCKET}/pk", "sort_key=huge", headers={"X-Garage-Causality-Token": token})
    assert r.status == 204, (r.status, r.body)
    b.cli("repair", "--yes", "tables")
    wait_for(lambda: sync_worker(b).get("unsyncable") is None, timeout=60)
    a_client = K2VHttp(a.endpoint, client.access_key, client.secret_key)
    r = a_client.request("GET", f"/{BUCKET}/pk", "sort_key=huge", headers={"Accept": "application/json"})
    assert r.status == 200 and r.json() == [None], (r.status, r.body[:200])  # a tombstone, on a too


def test_operations_reading_more_than_a_message_holds_are_413_and_others_unharmed(make_cluster):
    """Three 6 MiB items: reading all three in one transaction, or polling their range, needs an
    answer between nodes over the RPC frame limit. That is a 413 for that request (not a 503, as
    if nodes had failed), and transactions that each read one of them, batched by the coordinator
    into one consensus round, are each answered (the round is split, not failed)."""
    from concurrent.futures import ThreadPoolExecutor

    _, client = start(make_cluster, 3, rf=3)
    big = {f"s{i}": bytes([65 + i]) * (6 * MiB) for i in range(3)}
    for sk, value in big.items():
        put(client, "big", sk, value)

    def txn(*sks: str):
        return client.json("POST", f"/{BUCKET}/big", {"success": [{"op": "read", "sk": sk} for sk in sks]}, query="txn")

    r = txn(*big)
    assert r.status == 413 and r.json()["code"] == "EntityTooLarge", (r.status, r.body[:300])
    assert "do not fit in one message" in r.json()["message"]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda sk: txn(sk), [*big, *big]))
    for sk, r in zip([*big, *big], answers, strict=True):
        assert r.status == 200, (sk, r.status, r.body[:300])
        (result,) = r.json()["results"]
        assert [len(base64.b64decode(v)) for v in result["v"]] == [6 * MiB]
    r = client.json("POST", f"/{BUCKET}/big", {}, query="poll_range")
    assert r.status == 413 and r.json()["code"] == "EntityTooLarge", (r.status, r.body[:300])
    assert "narrower range" in r.json()["message"]
    r = client.json("POST", f"/{BUCKET}/big", {"prefix": "s1"}, query="poll_range")
    assert r.status == 200 and [i["sk"] for i in r.json()["items"]] == ["s1"], (r.status, r.body[:300])
