"""The provisioned Grafana dashboard queries only what the workers export, through the provisioned datasource.

Exported names come from the registry of `runtime.metrics.WorkerMetrics`, the only registry a worker's
/metrics serves, so a metric renamed or removed there fails here.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from runtime.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vip5.json"

# What prometheus_client adds to a family's name in the text format (`_created`: unless disabled).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",)}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "count", "topk", "bottomk", "rate", "irate", "increase", "changes",
                    "delta", "deriv", "resets", "histogram_quantile", "vector", "scalar", "clamp_min", "clamp_max",
                    "max_over_time", "min_over_time", "avg_over_time", "sum_over_time", "time", "timestamp", "abs"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def exported() -> tuple[dict[str, str], set[str]]:
    """({sample name: family type}, label names) of everything a worker's /metrics can show."""
    metrics = WorkerMetrics("dashboard-test")
    names = {family.name + suffix: family.type
             for family in metrics.registry.collect() for suffix in SUFFIXES[family.type]}
    wrappers = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    assert {w._name for w in wrappers} == {f.name for f in metrics.registry.collect()}
    labels = {label for w in wrappers for label in w._labelnames} | {"le"}
    return names, labels


def parse_promql(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, function names, label names) a PromQL expression refers to."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    labels = {m.group(1) for m in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr)}
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    for match in GROUPING.finditer(expr):
        labels |= {label.strip() for label in match.group(2).split(",") if label.strip()}
    expr = GROUPING.sub(" ", expr)
    metrics, functions = set(), set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name = match.group(1)
        if match.group(2):
            functions.add(name)
        elif name not in PROMQL_KEYWORDS:
            metrics.add(name)
    return metrics, functions, labels


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict]) -> list[dict]:
    """Every panel, those inside (collapsed) rows included."""
    return [p for item in items for p in [item, *panels(item.get("panels", []))]]


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every Prometheus annotation of the dashboard."""
    board = dashboard()
    found = [(f"panel {p['title']!r}", t["expr"]) for p in panels(board["panels"]) for t in p.get("targets", [])]
    for note in board["annotations"]["list"]:
        if not note.get("builtIn"):
            found.append((f"annotation {note['name']!r}", note.get("expr") or note["target"]["expr"]))
    return found


def test_parse_promql_separates_metrics_functions_and_labels():
    expr = ("histogram_quantile(0.99, sum by (le, job) "
            '(rate(vip5_stage_seconds_bucket{stage="rerank"}[$__rate_interval])))'
            " / on (job) group_left sum(vip5_consumer_lag) > 0 or vector(0)")
    assert parse_promql(expr) == ({"vip5_stage_seconds_bucket", "vip5_consumer_lag"},
                                  {"histogram_quantile", "sum", "rate", "vector"},
                                  {"le", "job", "stage"})


def test_dashboard_json_parses_and_every_panel_with_a_query_uses_the_provisioned_datasource():
    board = dashboard()
    assert board["uid"] and board["title"]
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    with_queries = [p for p in panels(board["panels"]) if p.get("targets")]
    assert len(with_queries) >= 10
    for panel in with_queries:
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]


@pytest.mark.parametrize(("where", "expr"), queries())
def test_every_dashboard_query_names_only_metrics_and_labels_the_workers_export(where, expr):
    names, labels = exported()
    metrics, functions, used_labels = parse_promql(expr)
    assert metrics, f"{where} names no metric: {expr}"
    assert metrics <= set(names), f"{where} names {sorted(metrics - set(names))}, not exported: {expr}"
    assert functions <= PROMQL_FUNCTIONS, f"{where} calls {sorted(functions - PROMQL_FUNCTIONS)}: {expr}"
    unknown = used_labels - labels - TARGET_LABELS
    assert not unknown, f"{where} uses labels {sorted(unknown)}, not exported: {expr}"
    for match in re.finditer(r"\b(?:rate|irate|increase)\(\s*([A-Za-z_:][\w:]*)", expr):
        family = names[match.group(1)]
        assert family in ("counter", "histogram"), f"{where}: rate over the {family} {match.group(1)}"


def test_dashboard_covers_the_operator_questions():
    used = set().union(*(parse_promql(expr)[0] for _, expr in queries()))
    assert {"vip5_records_in_total", "vip5_records_out_total", "vip5_freshness_seconds_bucket", "vip5_consumer_lag",
            "vip5_dead_letters_total", "vip5_batch_size_bucket", "vip5_stage_seconds_bucket",
            "vip5_adapter_version_info", "vip5_adapter_swaps_total", "vip5_adapter_rejections_total"} <= used
    exprs = [expr for _, expr in queries()]
    assert any("histogram_quantile(0.5," in e and "vip5_freshness_seconds_bucket" in e for e in exprs)
    assert any("histogram_quantile(0.99," in e and "vip5_freshness_seconds_bucket" in e for e in exprs)


def test_grafana_provisioning_loads_the_dashboard_directory_compose_mounts():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert all(v.endswith(":ro") for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vip5.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == [mounts["./deploy/grafana/dashboards"]]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['./deploy/grafana/dashboards']}/{DASHBOARD.name}"


def test_grafana_rate_interval_matches_the_prometheus_scrape_interval():
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert source["datasources"][0]["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
