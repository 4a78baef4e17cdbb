"""deploy/grafana's dashboard queries the metrics the sidecar really exports, by their names
in Prometheus.

The names are not typed out here: the real OpenTelemetry sink runs with an
in-memory exporter, and each metric it exports (name, unit, kind, attribute
keys, resource keys) is named as the Collector's Prometheus exporter names it
(collector-config/jaeger.yaml: ``prometheus`` with
``resource_to_telemetry_conversion``): dots to underscores, the unit's suffix
(``_seconds``; ``{block}``-style units none), ``_total`` on counters, and
``_bucket``/``_sum``/``_count`` on histograms.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import Histogram, Sum

from otel_blocksnoop.events import LoopTimes, Loss, ThreadTimes
from tests.helpers import ROOT
from tests.unit.test_otel_sink import APP, BLOCK, Harness

DASHBOARD = ROOT / "deploy" / "grafana" / "otel-blocksnoop.json"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "label_values", "le"}
UNIT_SUFFIXES = {"s": "seconds"}


def prometheus_name(name: str, unit: str, counter: bool) -> str:
    base = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    suffix = "" if unit.startswith("{") or not unit else UNIT_SUFFIXES.get(unit, unit)
    if suffix and not base.endswith(f"_{suffix}"):
        base += f"_{suffix}"
    return f"{base}_total" if counter else base


def label(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Each Prometheus series name the sidecar's metrics become, with its label names."""
    harness = Harness()
    harness.losses.add(Loss.CONTEXT_LATE)
    harness.sink.export(BLOCK)
    times = ThreadTimes(pid=42, tid=43, iterations=10, busy_ns=10**9, idle_ns=10**9)
    harness.sink.export(LoopTimes(threads=(times,), lost_events=1, identities=(APP,)))
    harness.sink.shutdown()
    series: dict[str, set[str]] = {}
    for exporter in harness.metrics:
        for batch in exporter.batches:
            for resource_metrics in batch.resource_metrics:
                resource = {label(key) for key in resource_metrics.resource.attributes}
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        data = metric.data
                        counter = isinstance(data, Sum) and data.is_monotonic
                        name = prometheus_name(metric.name, metric.unit or "", counter)
                        labels = {label(k) for p in data.data_points for k in p.attributes or {}}
                        labels |= resource
                        if isinstance(data, Histogram):
                            for part in ("_bucket", "_sum", "_count"):
                                series.setdefault(name + part, set()).update(labels)
                            series[name + "_bucket"].add("le")
                        else:
                            series.setdefault(name, set()).update(labels)
    assert len(series) >= 8  # every metric was exported: the histogram's three, five counters
    return series


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(board: dict[str, Any]) -> list[str]:
    found = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    found += [
        variable["definition"]
        for variable in board["templating"]["list"]
        if variable["type"] == "query"
    ]
    return found


def metric_names(query: str) -> set[str]:
    """The metrics a query reads (label names, also ``blocksnoop_*``, left out)."""
    query = re.sub(r"\{[^}]*\}", "", query)  # label matchers
    query = re.sub(r"\bby \([^)]*\)", "", query)  # grouping
    query = re.sub(r"(label_values\([a-z_]+),\s*[a-z_]+\)", r"\1)", query)
    return set(re.findall(r"\bblocksnoop_[a-z0-9_]+\b", query))


def test_every_metric_a_panel_queries_is_one_the_sidecar_exports(
    exported: dict[str, set[str]],
) -> None:
    used = set().union(*map(metric_names, queries(dashboard())))
    assert used, "the dashboard queries no blocksnoop metric"
    assert used <= exported.keys(), f"not exported: {sorted(used - exported.keys())}"


def test_every_metric_the_sidecar_exports_is_on_the_dashboard(
    exported: dict[str, set[str]],
) -> None:
    used = set().union(*map(metric_names, queries(dashboard())))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported}
    charted = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert families == charted, f"not charted: {sorted(families - charted)}"


def test_every_label_a_query_names_is_on_the_metrics_it_queries(
    exported: dict[str, set[str]],
) -> None:
    for query in queries(dashboard()):
        labels = set(re.findall(r"\bby \(([^)]*)\)", query))
        names = {name.strip() for group in labels for name in group.split(",")}
        names |= set(re.findall(r"([a-z_]+)\s*=~?\s*\"", query))
        names |= set(re.findall(r"label_values\([a-z_]+,\s*([a-z_]+)\)", query))
        available = set().union(*(exported[m] for m in metric_names(query)))
        assert names <= available, f"{query}: no {sorted(names - available)} on its metrics"


def test_the_dashboard_is_one_grafana_can_import() -> None:
    board = dashboard()
    assert board["uid"] == "otel-blocksnoop"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert [t["refId"] for t in panel["targets"]] == [
            chr(ord("A") + i) for i in range(len(panel["targets"]))
        ]
