"""``--json`` output of the operator commands: one naming style, camelCase, as the admin API.

The operations return their results with the field names their code uses; the CLI prints them
through here, so every ``--json`` output names its fields the way the admin API does
(``layoutVersion``, ``merkleItems``, ``lastErrorSecsAgo``). Only field names change: values (node
ids, table names such as ``k2v_item``, messages) are printed as they are. docs/admin-api.md
("Naming") states the rule.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
# Maps whose keys are data, not field names: their keys are left alone.
_DATA_KEYED = frozenset({"updateTrackers", "errors", "byOp", "partitionsPerNode"})


def camel(name: str) -> str:
    if not _SNAKE.fullmatch(name):
        return name
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def camelize(obj: Any, data_keyed: bool = False) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = k if data_keyed or not isinstance(k, str) else camel(k)
            out[key] = camelize(v, key in _DATA_KEYED)
        return out
    if isinstance(obj, list):
        return [camelize(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(camelize(obj), indent=2)
