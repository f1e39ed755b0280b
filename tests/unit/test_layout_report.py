"""The computation report of a new layout version (what ``layout show``/``apply`` print), and the
checks ``compute_version`` makes on its own.

The report's figures are recomputed here from the version itself (partitions per node, copies new
to a node, partitions per zone, capacities), so the tests hold whatever assignment is chosen.
"""

from __future__ import annotations

import re

import pytest

from garagekv.rpc.layout import (
    MAX_NODE_NUMBER,
    MAXIMUM,
    NB_PARTITIONS,
    LayoutError,
    LayoutHistory,
    LayoutVersion,
    NodeRole,
)
from garagekv.rpc.layout.compute import compute_version
from garagekv.rpc.layout.units import format_bytes
from tests.support.layouts import nid

TITLE = "==== COMPUTATION OF A NEW PARTITION ASSIGNATION ===="
ADVICE = (
    "If the percentage is too low, it might be that the cluster topology and redundancy "
    "constraints are forcing the use of nodes/zones with small storage capacities."
)
ADVICE_BLOCK = [
    "",
    ADVICE,
    "You might want to move storage capacity between zones or relax the redundancy constraint.",
    "See the detailed statistics below and look for saturated nodes/zones.",
]
LOW_SIZE = "WARNING: The partition size is low (< 100)"
LOW_SIZE_LINE = LOW_SIZE + ", make sure the capacities of your nodes are correct and are of at least a few MB"


def apply(h: LayoutHistory, nodes: dict[int, tuple[str, int | None] | None], zr=MAXIMUM):
    for i, role in nodes.items():
        h.stage_role(nid(i), None if role is None else NodeRole(*role))
    h.stage_zone_redundancy(zr)
    return h.apply_staged_changes(h.current().version + 1)


def percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}"


def header(v: LayoutVersion, prev: LayoutVersion | None) -> list[str]:
    """The report up to the capacity lines, from the version's own figures."""
    rf, size = v.replication_factor, v.partition_size
    used = size * NB_PARTITIONS * rf
    total = sum(v.roles[n].capacity or 0 for n in v.storage_nodes())
    zones = len({v.roles[n].zone for n in v.storage_nodes()})
    previous = f" ({format_bytes(prev.partition_size)} in previous layout)" if prev is not None else ""
    return [
        TITLE,
        "",
        f"Partitions are replicated {rf} times on at least {min(rf, zones)} distinct zones.",
        "",
        f"Optimal partition size:                     {format_bytes(size)}{previous}",
        f"Usable capacity / total cluster capacity:   {format_bytes(used)} / {format_bytes(total)} "
        f"({percent(used, total)} %)",
        f"Effective capacity (replication factor {rf}):  {format_bytes(used // rf)}",
    ]


def table(v: LayoutVersion, prev: LayoutVersion | None) -> list[list[list[str]]]:
    """Per zone, its rows as cells: [zone, headings...], one row per node, then TOTAL.

    Empty cells are left out (``cells`` cannot see them): the Tags of these tests, and the Host of
    a node that is a host by itself. When some storage node names a host, the table has a Host
    column and the workers of each host follow each other, in order of the host's first node.
    """
    size = v.partition_size
    hosts = any(v.roles[n].host is not None for n in v.storage_nodes())
    blocks = []
    for zone in sorted({v.roles[n].zone for n in v.storage_nodes()}):
        members = [n for n in v.storage_nodes() if v.roles[n].zone == zone]
        if hosts:
            first = {}
            for i, n in enumerate(members):
                first.setdefault(v.roles[n].host or n, i)
            members.sort(key=lambda n: first[v.roles[n].host or n])
        rows = [[zone, *(["Host"] if hosts else []), "Tags", "Partitions", "Capacity", "Usable capacity"]]
        for n in members:
            held = [p for p in range(NB_PARTITIONS) if n in v.nodes_of(p)]
            new = [p for p in held if prev is None or n not in prev.nodes_of(p)]
            cap = v.roles[n].capacity or 0
            usable = len(held) * size
            host = v.roles[n].host
            rows.append(
                [
                    n.hex()[:16],
                    *([] if host is None else [host.hex()[:16]]),
                    f"{len(held)} ({len(new)} new)",
                    format_bytes(cap),
                    f"{format_bytes(usable)} ({percent(usable, cap)}%)",
                ]
            )
        copies = sum(1 for p in range(NB_PARTITIONS) for n in v.nodes_of(p) if n in members)
        unique = sum(1 for p in range(NB_PARTITIONS) if any(n in members for n in v.nodes_of(p)))
        zone_cap = sum(v.roles[n].capacity or 0 for n in members)
        rows.append(
            [
                "TOTAL",
                f"{copies} ({unique} unique)",
                format_bytes(zone_cap),
                f"{format_bytes(copies * size)} ({percent(copies * size, zone_cap)}%)",
            ]
        )
        blocks.append(rows)
    return blocks


def cells(text: str) -> list[list[list[str]]]:
    """The report's table back into cells: columns are separated by two spaces or more."""
    assert not text.endswith("\n") and "\n\n\n" not in text
    return [[re.split(r" {2,}", line.strip()) for line in block.split("\n")] for block in text.split("\n\n")]


def assert_aligned(text: str, v: LayoutVersion) -> None:
    """Every figure of the table stands under its heading: the last three cells of each row
    (partitions, capacity, usable capacity) start where the last three headings do, and a host id
    where the Host heading does. ``cells`` alone would not see a row shifted by an extra column."""
    hosts = {h.hex()[:16] for h in (v.roles[n].host for n in v.storage_nodes()) if h is not None}
    for block in text.split("\n\n"):
        heading, *rows = [
            [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", line)] for line in block.split("\n")
        ]
        starts = {name: col for col, name in heading}
        for row in rows:
            assert [col for col, _ in row[-3:]] == [col for col, _ in heading[-3:]], block
            if len(row) > 1 and row[1][1] in hosts:
                assert row[1][0] == starts["Host"], block


def check_report(msg: list[str], v: LayoutVersion, prev: LayoutVersion | None) -> None:
    """``msg`` is the report of ``v`` computed from ``prev``; the low-size warning is left out."""
    msg = [line for line in msg if not line.startswith(LOW_SIZE)]
    head = header(v, prev)
    assert msg[: len(head)] == head
    if prev is not None:
        moved = sum(1 for p in range(NB_PARTITIONS) for n in v.nodes_of(p) if n not in prev.nodes_of(p))
        transfer = f"A total of {moved} new copies of partitions need to be transferred."
        assert msg[-5] != "" and msg[-4:-1] == ["", transfer, ""]
    else:
        assert not any("new copies" in line or "previous layout" in line for line in msg)
        assert msg[-3] != "" and msg[-2] == ""
    assert cells(msg[-1]) == table(v, prev)
    assert_aligned(msg[-1], v)


THREE_ZONES = {1: ("dc1", 10**9), 2: ("dc1", 2 * 10**9), 3: ("dc2", 10**9), 4: ("dc3", 3 * 10**9)}


def test_report_of_a_first_layout_and_of_a_change():
    h1, msg1 = apply(LayoutHistory.new(3), THREE_ZONES)
    check_report(msg1, h1.current(), None)
    assert ADVICE in msg1  # 3 GB usable of 7 GB: the smallest zone limits the size
    h2, msg2 = apply(h1.clone(), {5: ("dc2", 2 * 10**9)})
    check_report(msg2, h2.current(), h1.current())
    assert ADVICE not in msg2
    h3, msg3 = apply(h2.clone(), {2: None})  # a node leaves: its partitions land elsewhere
    check_report(msg3, h3.current(), h2.current())


def test_report_counts_a_zone_that_holds_no_partition():
    """With zone redundancy 1 a zone too small for one partition holds none: ``0 (0 unique)``."""
    h, msg = apply(LayoutHistory.new(1), {1: ("big", 256_000), 2: ("small", 50)}, zr=1)
    v = h.current()
    assert v.partition_size == 1000 and v.usage().get(nid(2), 0) == 0
    check_report(msg, v, None)
    assert cells(msg[-1])[1][-1][:2] == ["TOTAL", "0 (0 unique)"]


@pytest.mark.parametrize(("capacity", "size", "warned"), [(25_600, 100, False), (25_599, 99, True), (256, 1, True)])
def test_low_partition_size_warning_below_100(capacity, size, warned):
    h, msg = apply(LayoutHistory.new(1), {1: ("z", capacity)})
    v = h.current()
    assert v.partition_size == size
    check_report(msg, v, None)
    assert (msg[5] == LOW_SIZE_LINE) == warned
    assert sum(line.startswith(LOW_SIZE) for line in msg) == warned


@pytest.mark.parametrize(("third", "advice"), [(352_000, False), (352_001, True)])
def test_low_usage_advice_below_80_percent(third, advice):
    """Three zones, one copy in each: the smallest zone (256,000) bounds the usable capacity
    to 768,000, exactly 80 % of a 960,000 total; one byte more in a zone is below 80 %."""
    h, msg = apply(LayoutHistory.new(3), {1: ("a", 256_000), 2: ("b", 352_000), 3: ("c", third)})
    check_report(msg, h.current(), None)
    assert (msg[7:11] == ADVICE_BLOCK) == advice
    assert (ADVICE in msg) == advice


def test_exactly_the_maximum_number_of_storage_nodes_is_allowed():
    h = LayoutHistory.new(1)
    for i in range(MAX_NODE_NUMBER):
        h.stage_role(i.to_bytes(32, "big"), NodeRole("z", 10**6))
    out, _ = h.apply_staged_changes(1)
    assert len(out.current().storage_nodes()) == MAX_NODE_NUMBER


def test_compute_refuses_a_zone_redundancy_above_the_replication_factor():
    """Staging refuses it already; a version computed from roles and parameters received some other
    way is checked again."""
    h, _ = apply(LayoutHistory.new(2), {1: ("a", 10**9), 2: ("b", 10**9), 3: ("c", 10**9)})
    prev = h.current()
    with pytest.raises(LayoutError, match=r"smaller or equal to the replication factor \(2\)"):
        compute_version(prev, dict(prev.roles), 3)
    new, _ = compute_version(prev, dict(prev.roles), 2)
    assert new.version == prev.version + 1 and new.zone_redundancy == 2


def hid(i: int) -> bytes:
    return bytes([0xF0, i]) + bytes(30)


def test_report_with_hosts_has_a_host_column_and_lists_a_hosts_workers_together():
    """Nodes 1 and 3 are the workers of one host, node 2 a host by itself (an empty Host cell),
    4 and 5 the workers of a host in dc2: dc1 lists 1, 3, then 2."""
    nodes = {
        1: ("dc1", 2 * 10**9, (), hid(1)),
        2: ("dc1", 10**9),
        3: ("dc1", 2 * 10**9, (), hid(1)),
        4: ("dc2", 10**9, (), hid(2)),
        5: ("dc2", 3 * 10**9, (), hid(2)),
    }
    h1, msg1 = apply(LayoutHistory.new(2), nodes)
    check_report(msg1, h1.current(), None)
    dc1, dc2 = cells(msg1[-1])
    assert dc1[0] == ["dc1", "Host", "Tags", "Partitions", "Capacity", "Usable capacity"]
    assert [row[:2] for row in dc1[1:3]] == [
        [nid(1).hex()[:16], hid(1).hex()[:16]],
        [nid(3).hex()[:16], hid(1).hex()[:16]],
    ]
    assert dc1[3][0] == nid(2).hex()[:16] and dc1[3][1].endswith(" new)")  # no Host cell
    assert [row[1] for row in dc2[1:3]] == [hid(2).hex()[:16]] * 2
    h2, msg2 = apply(h1.clone(), {6: ("dc2", 2 * 10**9)})
    check_report(msg2, h2.current(), h1.current())
