"""Reading a node's /metrics: the samples a standard Prometheus parser finds, and one sample's value.

Used by the metrics tests (``tests/integration/test_admin_metrics.py``) and by the cluster tests
that check what a metric says (``tests/integration/test_conditional_metrics_cluster.py``).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support import NodeProcess


def scrape(node: NodeProcess) -> dict[tuple[str, tuple], float]:
    """sample name + sorted labels -> value; /metrics is open (no metrics token) on this node."""
    r = node.admin_http("GET", "/metrics", token="")
    assert r.status == 200 and r.header("Content-Type").startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
