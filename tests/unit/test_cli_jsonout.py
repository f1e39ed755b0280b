"""--json output names fields in camelCase and leaves data alone."""

from __future__ import annotations

from garagekv.cli.jsonout import camel, camelize


def test_field_names_become_camel_case():
    assert camel("layout_version") == "layoutVersion"
    assert camel("last_error_secs_ago") == "lastErrorSecsAgo"
    assert camel("merkleItems") == "merkleItems" and camel("id") == "id"


def test_values_and_data_keyed_maps_are_untouched():
    doc = {
        "layout_version": 2,
        "tables": [{"table": "k2v_item", "gc_todo": 1}],
        "updateTrackers": {"ab12": {"sync_ack": 1}},
        "errors": {"connection_reset": 3},
    }
    assert camelize(doc) == {
        "layoutVersion": 2,
        "tables": [{"table": "k2v_item", "gcTodo": 1}],
        "updateTrackers": {"ab12": {"syncAck": 1}},
        "errors": {"connection_reset": 3},
    }
