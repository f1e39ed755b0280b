#!/usr/bin/env python3
"""Where a node's disk bytes go, per K2V item (not in CI: minutes of load).

Starts one ``garagekv dev`` node, prefills N items (``make bench-scale``'s loader), waits for the
node's background work (index counters) to finish, stops it, then opens its LMDB
environment read-only and reports per named tree: entries, key and value bytes, the pages LMDB
uses (branch, leaf, overflow) and what that costs per item. It also splits a K2V item's stored
value into its parts and the range sums into their levels. The numbers behind
the "Bytes per item" table of docs/storage.md.

Usage: scripts/storage_accounting.py [--items N] [--value-size B] [--out FILE.json]
       scripts/storage_accounting.py --db PATH/TO/db.lmdb --items N   (an existing, stopped node)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb
import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from garagekv.bench.clusters import DevCluster, settle  # noqa: E402
from garagekv.bench.procstat import disk_usage  # noqa: E402
from garagekv.model.k2v.item import K2VItem  # noqa: E402
from garagekv.model.k2v.stored import PACKED, ItemStoredForm  # noqa: E402

ITEM_TREE = "k2v_item:data"
SUMS_TREE = "k2v_item:sums"
SAMPLE = 1000
NODE_OVERHEAD = 8 + 2  # LMDB leaf node header and its slot in the page's offset array
PAGE_HEADER = 16  # item values decoded for the breakdown


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class TreeStats:
    """One named tree: what it holds and the pages LMDB spends on it."""

    name: str
    entries: int = 0
    key_bytes: int = 0
    value_bytes: int = 0
    branch_pages: int = 0
    leaf_pages: int = 0
    overflow_pages: int = 0
    depth: int = 0
    page_size: int = 4096
    parts: dict[str, int] = field(default_factory=dict)  # optional finer split (Merkle node kinds)

    @property
    def pages(self) -> int:
        return self.branch_pages + self.leaf_pages + self.overflow_pages

    @property
    def page_bytes(self) -> int:
        return self.pages * self.page_size

    @property
    def slack(self) -> int:
        """Page bytes not holding key or value bytes: node headers, free space, branch pages."""
        return self.page_bytes - self.key_bytes - self.value_bytes

    @property
    def branch_bytes(self) -> int:
        return self.branch_pages * self.page_size

    @property
    def header_bytes(self) -> int:
        """LMDB's fixed costs in leaf pages: an 8-byte node header and a 2-byte slot per entry,
        16 bytes per page."""
        return NODE_OVERHEAD * self.entries + PAGE_HEADER * self.leaf_pages

    @property
    def free_bytes(self) -> int:
        """What is left: unused space in leaf pages and overflow pages' last-page rounding."""
        return self.slack - self.branch_bytes - self.header_bytes


def packed_len(obj: Any) -> int:
    return len(msgpack.packb(obj, use_bin_type=True))


def item_breakdown(raw: bytes, tree_key: bytes = b"") -> dict[str, int]:
    """Split one stored K2V item value into what each part costs (sums to ``len(raw)``).

    Canonical bytes (items stored before they were packed) hold the bucket id, partition and
    sort key; packed ones (garagekv/model/k2v/stored.py) a bucket number and the partition key
    (a ``tree_key`` is then needed, for the sort key). ``causal context``: the packed node ids
    and timestamps; ``value``: the client's bytes; ``expiry``: the expiries of values written
    with a TTL; ``msgpack framing``: list, string and bin headers.
    """
    if raw and raw[0] & PACKED:
        form = ItemStoredForm(_AnyBucket())  # the split does not need the real bucket ids
        n_at = 1
        while raw[n_at] & 0x80:
            n_at += 1
        item = K2VItem.decode(form.unpack(tree_key, raw))
        out = {"format byte": 1, "bucket number": n_at, "partition key": len(item.partition_key.encode())}
    else:
        item = K2VItem.decode(raw)
        out = {
            "format byte": 1,
            "bucket id": len(item.bucket_id),
            "partition key": len(item.partition_key.encode()),
            "sort key": len(item.sort_key.encode()),
        }
    out |= {"causal context": 0, "value": 0}
    for node, entry in item.items.items():
        out["causal context"] += packed_len(node) + packed_len(entry.t_discard)
        for ts, v in entry.values:
            out["causal context"] += packed_len(ts)
            out["value"] += len(v) if v is not None else 0
        if entry.expiry:  # format 2: values written with a TTL carry their expiry
            out["expiry"] = out.get("expiry", 0) + sum(packed_len(e) for e in entry.expiry.values())
    out["msgpack framing"] = len(raw) - sum(out.values())
    return out


class _AnyBucket:
    """Bucket numbers for ``item_breakdown``, which only reads."""

    def number_in(self, tx: Any, bucket_id: bytes) -> int:
        raise NotImplementedError

    def bucket_id(self, n: int) -> bytes:
        return bytes(32)


def sums_parts(key: bytes, raw: bytes) -> dict[str, int]:
    """One range sums record (garagekv/table/range_sums.py): its level (the key's first byte, 0
    for the meta record), then the chunk's start key and its 32-byte sum."""
    level = f"level {key[0]}" if key[:1] != b"\x00" else "meta"
    return {f"{level} records": 1, f"{level} key bytes": len(key), f"{level} value bytes": len(raw)}


def _tree_names(env: lmdb.Environment) -> list[str]:
    with env.begin() as txn:
        return [k.decode() for k, _ in txn.cursor()]


def account(db_path: Path, sample: int = SAMPLE) -> dict[str, Any]:
    """Read a stopped node's LMDB environment (read-only, no lock) and measure every tree."""
    env = lmdb.open(str(db_path), readonly=True, lock=False, max_dbs=256, readahead=False)
    try:
        names = _tree_names(env)
        trees: list[TreeStats] = []
        items: dict[str, int] = {}
        sampled = 0
        with env.begin(buffers=True) as txn:
            main = txn.stat()
            for name in names:
                db = env.open_db(name.encode(), txn=txn, create=False)
                st = txn.stat(db)
                t = TreeStats(
                    name,
                    entries=st["entries"],
                    branch_pages=st["branch_pages"],
                    leaf_pages=st["leaf_pages"],
                    overflow_pages=st["overflow_pages"],
                    depth=st["depth"],
                    page_size=st["psize"],
                )
                for k, v in txn.cursor(db):
                    t.key_bytes += len(k)
                    t.value_bytes += len(v)
                    if name == SUMS_TREE:
                        for part, c in sums_parts(bytes(k), bytes(v)).items():
                            t.parts[part] = t.parts.get(part, 0) + c
                    elif name == ITEM_TREE and sampled < sample:
                        for part, n in item_breakdown(bytes(v), bytes(k)).items():
                            items[part] = items.get(part, 0) + n
                        sampled += 1
                trees.append(t)
        info = env.info()
        psize = env.stat()["psize"]
    finally:
        env.close()
    data_file = Path(db_path) / "data.mdb"
    used = sum(t.pages for t in trees) + main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"] + 2
    return {
        "file_bytes": data_file.stat().st_size,
        "page_size": psize,
        "last_page": info["last_pgno"],
        # pages below the high-water mark that no tree holds: LMDB's free list (and its own pages)
        "free_pages": info["last_pgno"] + 1 - used,
        "catalog_pages": main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"],
        "trees": [
            asdict(t)
            | {
                "pages": t.pages,
                "page_bytes": t.page_bytes,
                "slack": t.slack,
                "branch_bytes": t.branch_bytes,
                "header_bytes": t.header_bytes,
                "free_bytes": t.free_bytes,
            }
            for t in trees
        ],
        "item_sample": sampled,
        "item_parts": items,
    }


def load_node(root: Path, items: int, value_size: int, settle_s: float) -> Path:
    """One dev node with ``items`` prefilled items, stopped after its background work; its LMDB path."""
    from bench_scale import load  # the loader of ``make bench-scale``

    with DevCluster(root, 1) as dev:
        say(f"loading {items:,} items of {value_size} B")
        load(dev, items, value_size)
        waited = settle(dev.pids, settle_s)
        say(f"background work after loading took {waited:.0f}s")
        meta = dev.meta_dirs[0]
    return meta / "db.lmdb"


def per_item(v: float, n: int) -> str:
    return f"{v / n:,.1f}" if n else "-"


def ratio(entries: int, n: int) -> str:
    """Entries per item: ``1.13``, or ``1/1,000`` when there is one per many items."""
    if not n or not entries:
        return "0"
    return f"{entries / n:.2f}" if entries >= n / 100 else f"1/{n / entries:,.0f}"


def split_empty(trees: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Trees holding pages (largest first), and the empty ones."""
    ordered = sorted(trees, key=lambda t: (-t["page_bytes"], t["name"]))
    return [t for t in ordered if t["pages"]], [t for t in ordered if not t["pages"]]


def render(acc: dict[str, Any], n: int, value_size: int, stamp: str) -> str:
    """The Markdown tables of docs/storage.md's "Bytes per item"."""
    lines = [
        f"Measured {stamp}: one node, N = {n:,} items of {value_size} B, page size {acc['page_size']} B.",
        "",
        "| tree | entries | per item | key B/item | value B/item | pages (branch/leaf/overflow) | page B/item "
        "| slack B/item | of which node+page headers | branch pages | free space |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    total_pages = sum(t["page_bytes"] for t in acc["trees"])
    full, empty = split_empty(acc["trees"])
    for t in full:
        lines.append(
            f"| `{t['name']}` | {t['entries']:,} | {ratio(t['entries'], n)} | {per_item(t['key_bytes'], n)} | "
            f"{per_item(t['value_bytes'], n)} | {t['branch_pages']:,}/{t['leaf_pages']:,}/{t['overflow_pages']:,} | "
            f"{per_item(t['page_bytes'], n)} | {per_item(t['slack'], n)} | {per_item(t['header_bytes'], n)} | "
            f"{per_item(t['branch_bytes'], n)} | {per_item(t['free_bytes'], n)} |"
        )
    ps = acc["page_size"]
    other = acc["file_bytes"] - total_pages
    lines += [
        f"| tree catalog, meta pages | | | | | {acc['catalog_pages'] + 2} pages | "
        f"{per_item((acc['catalog_pages'] + 2) * ps, n)} | |",
        f"| free pages (LMDB free list) | | | | | {acc['free_pages']:,} pages | "
        f"{per_item(acc['free_pages'] * ps, n)} | |",
        f"| file above the last page | | | | | | {per_item(acc['file_bytes'] - (acc['last_page'] + 1) * ps, n)} | |",
        f"| **data.mdb** | | | | | | **{per_item(acc['file_bytes'], n)}** | |",
        f"| metadata directory on disk (du) | | | | | | {per_item(acc.get('dir_bytes') or 0, n)} | |",
        "",
        f"(trees' pages: {per_item(total_pages, n)} B/item; the file's remaining {per_item(other, n)} B/item are "
        "the rows below them.)",
    ]
    if empty:
        lines += [
            "",
            "Empty (no page): " + ", ".join(f"`{t['name']}`" for t in sorted(empty, key=lambda t: t["name"])) + ".",
        ]
    parts = acc["item_parts"]
    if acc["item_sample"]:
        total = sum(parts.values())
        lines += [
            "",
            f"A `{ITEM_TREE}` value, averaged over {acc['item_sample']:,} items:",
            "",
            "| part | B/item | share |",
            "|---|---:|---:|",
        ]
        for part, b in parts.items():
            lines.append(f"| {part} | {b / acc['item_sample']:.1f} | {100 * b / total:.0f}% |")
        lines.append(f"| **total** | **{total / acc['item_sample']:.1f}** | |")
    sums = next((t for t in acc["trees"] if t["name"] == SUMS_TREE), None)
    if sums and sums["parts"]:
        sp = sums["parts"]
        lines += [
            "",
            f"`{SUMS_TREE}` records (B/item: key and value bytes divided by N):",
            "",
            "| level | records | key B/item | value B/item |",
            "|---|---:|---:|---:|",
        ]
        for level in sorted({k.rsplit(" ", 2)[0] for k in sp}):
            c = sp.get(f"{level} records", 0)
            kb, vb = sp.get(f"{level} key bytes", 0), sp.get(f"{level} value bytes", 0)
            lines.append(f"| {level} | {c:,} | {per_item(kb, n)} | {per_item(vb, n)} |")
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--settle", type=float, default=900.0, help="max seconds to wait for background work")
    p.add_argument("--db", type=Path, help="measure this (stopped) node's db.lmdb instead of loading one")
    p.add_argument("--out", type=Path, help="also write the raw figures as JSON here")
    p.add_argument("--keep", type=Path, help="load the node under this (new) directory and keep it afterwards")
    a = p.parse_args(list(argv) if argv is not None else None)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    work = None
    try:
        if a.db is None and a.keep is not None:
            db = load_node(a.keep, a.items, a.value_size, a.settle)
        elif a.db is None:
            work = Path(tempfile.mkdtemp(prefix="storage-accounting-"))
            db = load_node(work / "garagekv", a.items, a.value_size, a.settle)
        else:
            db = a.db
        acc = account(db)
        acc["dir_bytes"] = disk_usage(db.parent)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(render(acc, a.items, a.value_size, stamp))
    if a.out:
        a.out.write_text(json.dumps({"items": a.items, "value_size": a.value_size, "date": stamp} | acc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
