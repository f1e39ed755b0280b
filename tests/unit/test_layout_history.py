"""Layout history: apply/revert rules, merging, trackers and version retirement, digests, wire."""

from __future__ import annotations

import logging
import re

import pytest

from garagekv.rpc.layout import (
    NB_PARTITIONS,
    OLD_VERSION_COUNT,
    ConsistencyMode,
    LayoutDigest,
    LayoutError,
    LayoutHistory,
    LayoutVersion,
    NodeRole,
    UpdateTracker,
    UpdateTrackers,
    describe_history,
    describe_layout_history,
    read_quorum,
    write_quorum,
)
from tests.support.layouts import THREE, nid, with_nodes


@pytest.fixture
def v1() -> LayoutHistory:
    return with_nodes(LayoutHistory.new(3), THREE)


def migrating(v1: LayoutHistory) -> LayoutHistory:
    """v1 plus a v2 that adds node 4 in a fourth zone (so partitions move); both versions live."""
    return with_nodes(v1.clone(), {4: ("dc4", 10**9)})


# ---------------------------------------------------------------------- apply / revert


def test_fresh_history_has_an_invalid_version_zero():
    h = LayoutHistory.new(3)
    assert h.current().version == 0 and h.min_stored() == 0
    assert h.write_sets_of(bytes(32)) == [[]]
    with pytest.raises(LayoutError):
        h.check()


def test_apply_requires_exactly_the_next_version(v1):
    v1.stage_role(nid(4), NodeRole("dc1", 10**9))
    with pytest.raises(LayoutError, match="Please pass the new layout version number") as e:
        v1.apply_staged_changes(None)
    assert "`garagekv layout show`" in e.value.message
    for wrong in (0, 1, 3):
        expected = rf"^Invalid new layout version {wrong}: .* the next one is 2 \(--version 2\)$"
        with pytest.raises(LayoutError, match=expected):
            v1.apply_staged_changes(wrong)
    out, msg = v1.apply_staged_changes(2)
    assert out.current().version == 2
    assert v1.current().version == 1  # apply returns a new history
    assert not out.has_staged_changes()
    assert msg[0] == "==== COMPUTATION OF A NEW PARTITION ASSIGNATION ===="


def test_first_apply_prunes_the_invalid_version_zero(v1):
    assert [v.version for v in v1.versions] == [1]
    v1.check()


def test_failed_apply_changes_nothing(v1):
    v1.stage_role(nid(1), None)
    v1.stage_role(nid(2), None)
    before = v1.to_wire()
    with pytest.raises(LayoutError, match="smaller than the replication factor"):
        v1.apply_staged_changes(2)
    assert v1.to_wire() == before


def test_revert_creates_no_version(v1):
    v1.stage_role(nid(4), NodeRole("dc1", 10**9))
    reverted = v1.revert_staged_changes()
    assert [v.version for v in reverted.versions] == [1]
    assert not reverted.has_staged_changes()


# ---------------------------------------------------------------------- migration and trackers


def test_write_and_read_sets_during_a_migration(v1):
    h = migrating(v1)
    assert [v.version for v in h.versions] == [1, 2]
    moved = [p for p in range(NB_PARTITIONS) if h.versions[0].nodes_of(p) != h.versions[1].nodes_of(p)]
    assert moved, "adding a node must move some partitions"
    pos = bytes([moved[0]]) + bytes(31)
    old_set, new_set = h.write_sets_of(pos)
    assert old_set == h.versions[0].nodes_of(moved[0]) and new_set == h.versions[1].nodes_of(moved[0])
    assert h.storage_nodes_of(pos) == sorted(set(old_set) | set(new_set))
    assert len(h.storage_nodes_of(pos)) == 4
    # Nobody has synced v2 yet: reads stay on v1.
    assert h.sync_map_min() == 1 and h.read_version().version == 1
    assert h.read_nodes_of(pos) == old_set


def test_reads_move_on_once_a_write_quorum_of_each_old_set_synced(v1):
    h = migrating(v1)
    h.mark_synced(nid(1), 2)
    assert h.sync_map_min() == 1  # 1 of 3 in the v1 set {1,2,3}: no quorum of 2
    h.mark_synced(nid(2), 2)
    assert h.sync_map_min() == 2  # 2 of 3 synced: every acknowledged write is readable in v2
    assert h.read_version().version == 2


def test_rf2_needs_every_node_synced():
    h = with_nodes(LayoutHistory.new(2), {1: ("a", 10**9), 2: ("b", 10**9)})
    h = with_nodes(h, {3: ("a", 10**9)})
    assert write_quorum(2) == 2
    h.mark_synced(nid(1), 2)
    h.mark_synced(nid(2), 2)
    assert h.sync_map_min() == 1  # node 3 (a v2 storage node) has not synced
    h.mark_synced(nid(3), 2)
    assert h.sync_map_min() == 2


def test_old_versions_retire_once_every_current_node_sync_acked(v1):
    h = migrating(v1)
    nodes = [nid(i) for i in range(1, 5)]
    for n in nodes:
        h.update_local_trackers(n)
    assert h.update_trackers.ack_map.values == dict.fromkeys(nodes, 2)
    assert [v.version for v in h.versions] == [1, 2]  # synced to v1 only
    for n in nodes:
        h.mark_synced(n, 2)
    for n in nodes[:-1]:
        h.update_local_trackers(n)
    assert [v.version for v in h.versions] == [1, 2]  # node 4 has not sync-acked yet
    assert h.update_local_trackers(nodes[-1]) is True
    assert [v.version for v in h.versions] == [2]
    assert [v.version for v in h.old_versions] == [1]
    assert h.write_sets_of(bytes(32)) == [h.current().nodes_of(0)]


def test_ack_version_holds_back_acknowledgement(v1):
    h = migrating(v1)
    h.update_local_trackers(nid(1), ack_version=1)  # a write computed on v1 is still in flight
    assert h.update_trackers.ack_map.get(nid(1), 0) == 1
    assert h.ack_map_min() == 1


def test_gateways_block_retirement_too(v1):
    h = with_nodes(v1, {5: ("dc1", None)})
    for i in range(1, 5):
        h.mark_synced(nid(i), 2)
    for i in range(1, 4):
        h.update_local_trackers(nid(i))
    assert len(h.versions) == 2  # the gateway (node 5) still reads from v1
    h.update_local_trackers(nid(5))
    assert [v.version for v in h.versions] == [2]


def test_old_versions_are_capped():
    h = with_nodes(LayoutHistory.new(1), {1: ("a", 10**9)})
    for i in range(2, 10):
        h = with_nodes(h, {i: ("a", 10**9)})
        for n in h.all_nodes():
            h.mark_synced(n, h.current().version)
        for n in h.all_nodes():
            h.update_local_trackers(n)
        assert len(h.versions) == 1
    assert len(h.old_versions) == OLD_VERSION_COUNT
    assert [v.version for v in h.old_versions] == list(range(9 - OLD_VERSION_COUNT, 9))


def test_keep_current_version_only_outside_consistent_mode(v1):
    h = migrating(v1)
    h.normalize(ConsistencyMode.DEGRADED)
    assert [v.version for v in h.versions] == [2]
    h2 = migrating(v1)
    h2.normalize("consistent")
    assert len(h2.versions) == 2
    assert all(h2.update_trackers.sync_map.get(n, -1) == 1 for n in h2.all_nodes())  # clamped


def test_skip_dead_nodes(v1):
    with pytest.raises(LayoutError, match="only one live cluster layout version"):
        v1.skip_dead_nodes(1, set(), False)
    h = migrating(v1)
    with pytest.raises(LayoutError, match="Invalid version, you may use the following version numbers: 2$"):
        h.skip_dead_nodes(1, set(), False)
    up = {nid(1), nid(2), nid(3)}
    for n in up:
        h.update_local_trackers(n)
    lines = h.skip_dead_nodes(2, up, False)
    assert lines == [f"Increased the ACK tracker for node {nid(4).hex()[:16]}"]
    with pytest.raises(LayoutError, match="allow-missing-data"):
        h.skip_dead_nodes(2, up, False)
    lines = h.skip_dead_nodes(2, up, True)
    assert lines == [f"Increased the SYNC tracker for node {nid(i).hex()[:16]}" for i in range(1, 5)]
    assert h.sync_map_min() == 2
    with pytest.raises(LayoutError, match="nothing I can do"):
        h.skip_dead_nodes(2, up, True)


# ---------------------------------------------------------------------- merge and gossip


def test_a_fresh_node_adopts_a_newer_history_wholesale(v1):
    fresh = LayoutHistory.new(3)
    assert fresh.merge(v1) is True
    assert fresh == v1
    assert fresh.merge(v1) is False


def test_merge_appends_the_next_version_and_ignores_older_ones(v1):
    peer = v1.clone()
    ahead = migrating(v1)
    assert peer.merge(ahead) is True
    assert [v.version for v in peer.versions] == [1, 2]
    assert peer.current() == ahead.current()
    assert ahead.merge(v1) is False  # older information changes nothing


def test_merge_takes_tracker_maxima(v1):
    a, b = migrating(v1), migrating(v1)
    a.update_local_trackers(nid(1))
    b.update_local_trackers(nid(2))
    b.update_trackers.ack_map.set_max(nid(1), 1)
    assert a.merge(b) is True
    assert a.update_trackers.ack_map.values == {nid(1): 2, nid(2): 2}
    assert b.merge(a) is True
    assert a.update_trackers == b.update_trackers


def test_conflicting_versions_are_logged_not_merged(v1, caplog):
    a = with_nodes(v1.clone(), {4: ("dc1", 10**9)})
    b = with_nodes(v1.clone(), {5: ("dc2", 10**9)})
    with caplog.at_level(logging.ERROR):
        a.merge(b)
    assert "Inconsistent layout histories: different layout compositions for version 2" in caplog.text
    assert nid(4) in a.current().roles and nid(5) not in a.current().roles


def test_digest_tells_what_to_pull(v1):
    local = v1.digest()
    assert v1.clone().digest() == local
    assert local.pull_needed(v1.digest()) is None
    staged = v1.clone()
    staged.stage_role(nid(9), NodeRole("dc9", 5))
    assert local.pull_needed(staged.digest()) == "full"
    tracked = v1.clone()
    tracked.update_local_trackers(nid(1))
    assert local.pull_needed(tracked.digest()) == "trackers"
    ahead = migrating(v1)
    assert local.pull_needed(ahead.digest()) == "full"
    assert LayoutDigest.from_wire(local.to_wire()) == local
    assert LayoutHistory.new(3).digest() == LayoutHistory.new(3).digest()


def test_check_remote(v1):
    with pytest.raises(LayoutError, match=re.escape("with replication factor 2, which is different from")):
        v1.check_remote(LayoutHistory.new(2), 3)
    broken = v1.clone()
    broken.current().partition_size += 1
    with pytest.raises(LayoutError, match="Discarding an invalid cluster layout"):
        v1.check_remote(broken, 3)
    v1.check_remote(migrating(v1), 3)
    fresh = LayoutHistory.new(3)  # a node with no layout yet: takes another fresh node's staging
    staged = LayoutHistory.new(3)
    staged.stage_role(nid(1), NodeRole("dc1", 10**9))
    fresh.check_remote(staged, 3)
    with pytest.raises(LayoutError, match="Discarding an invalid cluster layout"):
        fresh.check_remote(broken, 3)  # but never a computed version that is wrong


@pytest.mark.parametrize("where", ["older live version", "old version"])
def test_check_remote_reads_every_version_it_would_keep(v1, where):
    """A peer's history whose current version is valid but an older one names a node index that
    does not exist would break every node that merged it (nodes_of on that version)."""
    remote = migrating(v1)
    if where == "old version":
        remote.old_versions.append(LayoutVersion.from_wire(remote.versions[0].to_wire()))
        remote.old_versions[-1].version = 0
    bad = remote.versions[0] if where == "older live version" else remote.old_versions[-1]
    bad.ring_assignment_data = b"\xff" * len(bad.ring_assignment_data)
    for local in (v1, LayoutHistory.new(3)):
        with pytest.raises(LayoutError, match=r"layout version \d+: ring_assignment_data contains invalid node id 255"):
            local.check_remote(remote, 3)


# ---------------------------------------------------------------------- wire and text


def test_encode_round_trip(v1):
    h = migrating(v1)
    h.update_local_trackers(nid(2))
    h.stage_role(nid(7), NodeRole("dc7", 123, ["x"]))
    data = h.encode()
    back = LayoutHistory.decode(data)
    assert back == h and back.encode() == data
    assert back.digest() == h.digest()


@pytest.mark.parametrize("data", [b"", b"\x02whatever", b"\x01\xc1", b"\x01\x90", b"\x01\x81\xa1a\x01"])
def test_decode_rejects_garbage(data):
    with pytest.raises(LayoutError):
        LayoutHistory.decode(data)


def test_decode_rejects_non_consecutive_versions(v1):
    w = migrating(v1).to_wire()
    w["versions"][1]["version"] = 5
    with pytest.raises(LayoutError, match="not consecutive"):
        LayoutHistory.from_wire(w)


def test_show_ends_with_the_apply_line(v1):
    assert "apply --version" not in describe_history(v1)
    v1.stage_role(nid(4), NodeRole("dc1", 10**9, ["new"]))
    text = describe_history(v1)
    assert "==== STAGED ROLE CHANGES ====" in text
    assert "==== NEW CLUSTER LAYOUT AFTER APPLYING CHANGES ====" in text
    assert "A total of" in text and "new copies of partitions need to be transferred." in text
    assert text.endswith("\ngaragekv layout apply --version 2\n")
    assert re.search(r"apply --version (\d+)\n", text).group(1) == "2"


def test_show_explains_an_impossible_layout(v1):
    v1.stage_role(nid(1), None)
    text = describe_history(v1)
    assert f"{nid(1).hex()[:16]}  REMOVED" in text
    assert "Error while trying to compute the assignment: The number of nodes with positive capacity" in text
    assert "This new layout cannot yet be applied." in text
    assert "apply --version" not in text


def test_history_text_shows_trackers_during_migration(v1):
    assert "stable state" in describe_layout_history(v1)
    text = describe_layout_history(migrating(v1))
    assert re.search(r"^#2 +current +4 +0$", text, re.M)
    assert re.search(r"^#1 +draining +3 +0$", text, re.M)
    assert "==== UPDATE TRACKERS ====" in text
    assert re.search(rf"^{nid(4).hex()[:16]} +#1 +#1 +#1$", text, re.M)
    assert "skip-dead-nodes --version 2" in text


@pytest.mark.parametrize(
    ("rf", "mode", "write", "read"),
    [
        (1, "consistent", 1, 1),
        (2, "consistent", 2, 1),
        (3, "consistent", 2, 2),
        (3, "degraded", 2, 1),
        (3, "dangerous", 1, 1),
        (5, "consistent", 3, 3),
    ],
)
def test_quorums(rf, mode, write, read):
    assert write_quorum(rf, mode) == write
    assert read_quorum(rf, ConsistencyMode.parse(mode)) == read


def test_unknown_consistency_mode():
    with pytest.raises(LayoutError, match="consistent, degraded or dangerous"):
        ConsistencyMode.parse("eventual")


# ---------------------------------------------------------------------- sync_map_min against a model


def reference_sync_map_min(h: LayoutHistory) -> int:
    """sync_map_min from its definition: for every partition of every non-current live version,
    the version a write quorum of its nodes has synced (the quorum-th highest); the minimum."""
    if len(h.versions) == 1:
        return h.current().version
    lo, sync = h.min_stored(), h.update_trackers.sync_map
    quorum = write_quorum(h.replication_factor)
    out = h.current().version
    for v in h.versions[:-1]:
        for p in range(NB_PARTITIONS):
            synced = sorted((sync.get(n, lo) for n in v.nodes_of(p)), reverse=True)
            out = min(out, synced[quorum - 1])
    return out


def assert_sync_map_min_matches_model(h: LayoutHistory) -> None:
    """Every way of leaving one or two storage nodes behind (each at every older version)."""
    nodes = h.all_storage_nodes()
    versions = [v.version for v in h.versions]
    behind = [(a, b) for i, a in enumerate(nodes) for b in nodes[i:]]
    checked = set()
    for a, b in behind:
        for va in versions[:-1]:
            for vb in versions[:-1]:
                t = h.clone()
                t.update_trackers.sync_map.values = dict.fromkeys(nodes, versions[-1])
                t.update_trackers.sync_map.values[a] = va
                t.update_trackers.sync_map.values[b] = min(vb, va) if a == b else vb
                expected = reference_sync_map_min(t)
                assert t.sync_map_min() == expected, (a.hex()[:2], va, b.hex()[:2], vb)
                checked.add(expected)
    assert len(checked) > 1  # the scenarios did move the answer


def late_node_sets(v: LayoutVersion, *earlier: LayoutVersion) -> set[tuple[bytes, ...]]:
    """Node sets of ``v`` first used after a partition whose set was already seen (in ``v`` or in
    ``earlier`` versions): a scan that stopped at the first repeat would miss them."""
    seen = {tuple(sorted(e.nodes_of(p))) for e in earlier for p in range(NB_PARTITIONS)}
    sets = [tuple(sorted(v.nodes_of(p))) for p in range(NB_PARTITIONS)]
    first_repeat = next(p for p, s in enumerate(sets) if s in seen or s in sets[:p])
    return set(sets[first_repeat:]) - set(sets[:first_repeat]) - seen


FIVE_IN_TWO_ZONES = {1: ("a", 10**9), 2: ("a", 10**9), 3: ("a", 10**9), 4: ("b", 10**9), 5: ("b", 10**9)}


def test_sync_map_min_with_an_old_version_of_many_node_sets():
    """Five nodes in two zones give the old version nine node sets, some first used only after
    another set repeats; every one of them must be checked before reads move on."""
    h = with_nodes(LayoutHistory.new(3), FIVE_IN_TWO_ZONES)
    h = with_nodes(h, {6: ("c", 10**9)})
    assert late_node_sets(h.versions[0])  # the case this test is about
    assert_sync_map_min_matches_model(h)


def test_sync_map_min_with_three_live_versions():
    """v1, v2 and v3 live at once, with v2's first partitions still on a v1 node set: the sets
    v1 already had are skipped, not the rest of v2 (and sync values between the oldest and the
    current version count as such)."""
    h = with_nodes(LayoutHistory.new(3), {i: (f"dc{i}", 10**9) for i in range(1, 5)})
    h = with_nodes(h, {5: ("dc1", 10**9)})
    h = with_nodes(h, {6: ("dc6", 10**9)})
    assert [v.version for v in h.versions] == [1, 2, 3]
    v1_sets = {tuple(sorted(h.versions[0].nodes_of(p))) for p in range(NB_PARTITIONS)}
    assert tuple(sorted(h.versions[1].nodes_of(0))) in v1_sets  # the case this test is about
    assert late_node_sets(h.versions[1], h.versions[0])
    assert_sync_map_min_matches_model(h)


# ---------------------------------------------------------------------- gossip and change reports


DIGEST = LayoutDigest(7, 2, b"t" * 32, b"s" * 32)


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        (DIGEST, None),
        (LayoutDigest(8, 2, b"t" * 32, b"s" * 32), "full"),  # a newer version
        (LayoutDigest(6, 2, b"t" * 32, b"s" * 32), None),  # an older one: they will pull from us
        (LayoutDigest(7, 3, b"t" * 32, b"s" * 32), "full"),  # more live versions
        (LayoutDigest(7, 1, b"t" * 32, b"s" * 32), "full"),  # fewer (an old version retired)
        (LayoutDigest(7, 2, b"T" * 32, b"s" * 32), "trackers"),
        (LayoutDigest(7, 2, b"t" * 32, b"S" * 32), "full"),  # staged changes
        (LayoutDigest(6, 2, b"T" * 32, b"s" * 32), "trackers"),
        (LayoutDigest(8, 3, b"T" * 32, b"S" * 32), "full"),
    ],
)
def test_pull_needed_for_each_field(remote, expected):
    assert DIGEST.pull_needed(remote) == expected


def test_digest_fields_stay_in_their_places(v1):
    """A digest whose fields all differ, so a field swapped in ``digest``/``to_wire``/
    ``from_wire`` shows."""
    h = migrating(v1)
    h.normalize(ConsistencyMode.DEGRADED)  # only v2 lives: current 2, one active version
    h.stage_role(nid(9), NodeRole("dc9", 5))
    d = h.digest()
    assert (d.current_version, d.active_versions) == (2, 1)
    assert (d.trackers_hash, d.staging_hash) == (h.trackers_hash(), h.staging_hash())
    assert d.trackers_hash != d.staging_hash
    assert d.to_wire() == [2, 1, h.trackers_hash(), h.staging_hash()]
    assert LayoutDigest.from_wire(d.to_wire()) == d
    with pytest.raises(LayoutError, match="Malformed layout digest"):
        LayoutDigest.from_wire([2, 1, b""])


def test_merge_reports_a_change_when_only_a_version_is_new(v1):
    ahead = migrating(v1)
    behind = ahead.clone()
    behind.versions.pop()  # same trackers and staging, one version short
    assert behind.merge(ahead) is True
    assert behind == ahead
    assert behind.merge(ahead) is False


@pytest.mark.parametrize("tracker", ["ack_map", "sync_map", "sync_ack_map"])
def test_merge_reports_a_change_when_only_one_tracker_moved(v1, tracker):
    h = migrating(v1)
    h.clamp_update_trackers()
    other = h.clone()
    getattr(other.update_trackers, tracker).set_max(nid(1), 2)
    assert h.clone().update_trackers.merge(other.update_trackers) is True
    assert h.merge(other) is True
    assert h.update_trackers == other.update_trackers
    assert h.merge(other) is False


def test_merge_reports_a_change_when_only_staging_moved(v1):
    other = v1.clone()
    other.stage_role(nid(9), NodeRole("dc9", 5))
    assert v1.merge(other) is True
    assert v1.merge(other) is False


def test_update_local_trackers_reports_each_tracker_alone(v1):
    h = migrating(v1)
    n = nid(1)
    t = h.update_trackers
    assert h.update_local_trackers(n, ack_version=1) is True
    assert (t.ack_map.get(n, 0), t.sync_map.get(n, 0), t.sync_ack_map.get(n, 0)) == (1, 1, 1)
    assert h.update_local_trackers(n, ack_version=1) is False
    # Only the ack tracker moves.
    assert h.update_local_trackers(n) is True
    assert (t.ack_map.get(n, 0), t.sync_map.get(n, 0), t.sync_ack_map.get(n, 0)) == (2, 1, 1)
    # Only the sync tracker moves (it had been lost).
    del t.sync_map.values[n]
    assert h.update_local_trackers(n) is True
    assert t.sync_map.get(n, 0) == 1
    # Only the sync-ack tracker moves: a write quorum of the old set synced v2.
    h.mark_synced(nid(2), 2)
    h.mark_synced(nid(3), 2)
    assert h.sync_map_min() == 2
    assert h.update_local_trackers(n) is True
    assert (t.ack_map.get(n, 0), t.sync_map.get(n, 0), t.sync_ack_map.get(n, 0)) == (2, 1, 2)
    assert h.update_local_trackers(n) is False


def test_skip_dead_nodes_raises_the_trackers_themselves(v1):
    h = migrating(v1)
    up = {nid(1), nid(2), nid(3)}
    for n in up:
        h.update_local_trackers(n)
    t = h.update_trackers
    assert t.ack_map.get(nid(4), 0) == 0 and h.ack_map_min() == 1
    h.skip_dead_nodes(2, up, False)
    assert t.ack_map.get(nid(4), 0) == 2 and h.ack_map_min() == 2
    assert t.sync_map.get(nid(4), 0) == 0  # without --allow-missing-data, sync is left alone
    assert all(t.sync_map.get(n, 0) == 1 for n in up)
    h.skip_dead_nodes(2, up, True)
    assert all(t.sync_map.get(nid(i), 0) == 2 for i in range(1, 5))
    assert all(t.ack_map.get(nid(i), 0) == 2 for i in range(1, 5))


def test_tracker_basics():
    t = UpdateTracker()
    assert t.min_among([], 5) == 5  # no node to wait for: the caller's floor
    assert t.min_among([nid(1)], 5) == 5
    assert t.set_max(nid(1), 0) is True and t.set_max(nid(1), 0) is False
    assert t.min_among([nid(1), nid(2)], 5) == 0
    with pytest.raises(LayoutError, match="Malformed layout trackers"):
        UpdateTrackers.from_wire({"ack_map": [], "sync_map": []})


# ---------------------------------------------------------------------- edge cases found by mutation testing


def live_versions(count: int) -> LayoutHistory:
    """Versions 1..count all live: each adds a node and nobody syncs."""
    h = with_nodes(LayoutHistory.new(3), THREE)
    for i in range(4, count + 3):
        h = with_nodes(h, {i: (f"dc{i}", 10**9)})
    assert [v.version for v in h.versions] == list(range(1, count + 1))
    return h


def test_skip_dead_nodes_lists_every_version_it_accepts():
    h = live_versions(3)
    with pytest.raises(LayoutError, match="you may use the following version numbers: 2, 3$"):
        h.skip_dead_nodes(1, set(), False)


@pytest.mark.parametrize("live", [2, OLD_VERSION_COUNT + 3])
def test_keep_current_version_only_keeps_the_newest_old_versions(live):
    h = live_versions(live)
    h.keep_current_version_only()
    assert [v.version for v in h.versions] == [live]
    assert [v.version for v in h.old_versions] == list(range(max(1, live - OLD_VERSION_COUNT), live))


def test_check_accepts_three_live_versions_and_refuses_a_gap():
    h = live_versions(3)
    h.check()
    gap = LayoutHistory([h.versions[0], h.versions[2]])
    with pytest.raises(LayoutError, match="not consecutive"):
        gap.check()


def test_merging_versions_held_alike_or_retired_logs_no_conflict(v1, caplog):
    a = migrating(v1)
    b = a.clone()
    a.keep_current_version_only()  # a retired v1, which b still holds live
    with caplog.at_level(logging.WARNING):
        assert a.merge(b) is False
        assert b.merge(b.clone()) is False
    assert caplog.records == []
    assert [v.version for v in a.versions] == [2]


def test_cleanup_never_retires_the_only_version(v1):
    """Trackers ahead of the only live version (which skip_dead_nodes or a peer cannot cause, but
    nothing forbids) must not retire it: a history always has a current version."""
    for n in v1.all_nodes():
        v1.update_trackers.sync_ack_map.set_max(n, 5)
    v1.cleanup_old_versions()
    assert [v.version for v in v1.versions] == [1]


def test_a_history_that_cannot_be_stored_is_never_adopted(tmp_path, v1, monkeypatch):
    """The manager writes a new history to disk before using it: one that fails to encode (or
    to be written) leaves the node on the history it had, in memory and on disk."""
    from garagekv.rpc.layout.manager import LayoutManager

    m = LayoutManager(nid(1), tmp_path, 3, "consistent")
    m.replace(v1.clone())
    before, on_disk = m.history, (tmp_path / m.path.name).read_bytes()
    ahead = migrating(v1)

    def unencodable(self):
        raise OverflowError("Integer value out of range")

    monkeypatch.setattr(LayoutHistory, "encode", unencodable)
    with pytest.raises(OverflowError):
        m.replace(ahead)
    with pytest.raises(OverflowError):
        m.merge_remote(ahead)  # a peer's history fails the same way
    monkeypatch.undo()
    assert m.history is before and m.history.current().version == 1
    assert (tmp_path / m.path.name).read_bytes() == on_disk
    m.replace(ahead)  # once it can be stored, it is adopted
    assert m.history.current().version == 2


@pytest.mark.parametrize("damage", [b"", b"\x00", b"garbage"])
def test_a_damaged_layout_file_starts_the_node_without_a_layout(tmp_path, v1, damage, caplog):
    """Cut short by a crash or a full disk: the node starts without a layout (and refuses K2V
    requests until another node sends it, docs/operations.md §3) instead of refusing to start."""
    from garagekv.rpc.layout.manager import LayoutManager

    m = LayoutManager(nid(1), tmp_path, 3, "consistent")
    m.replace(v1.clone())
    m.path.write_bytes(m.path.read_bytes()[: len(damage)] if damage == b"" else damage)
    with caplog.at_level(logging.ERROR):
        again = LayoutManager(nid(1), tmp_path, 3, "consistent")
    assert again.history.current().version == 0
    assert str(m.path) in caplog.text
    assert again.merge_remote(v1.clone()) and again.history.current().version == 1  # gossip restores it
