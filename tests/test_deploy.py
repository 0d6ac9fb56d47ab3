"""The Prometheus and Grafana assets in deploy/: they parse, they are complete, and every Hearth
metric and label they query is one a running Hearth exports."""

from __future__ import annotations

import concurrent.futures
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import LiveHearth, eventually, make_settings
from tests.fakes import FakeOllama

from hearth.settings import DEFAULT_PORT

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SCRAPE = DEPLOY / "prometheus" / "scrape.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "hearth-dashboard.json"

MODEL = "llama3.1:8b"
DURATION = re.compile(r"^\d+[smhdwy]$")
# Grafana's own variables, valid in any query.
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
# Labels Prometheus adds to every series of a scrape target.
TARGET_LABELS = {"instance", "job"}


# ---- the files ---------------------------------------------------------------------------------


def rules() -> list[tuple[str, dict[str, Any]]]:
    """Every rule of alerts.yml, with the name of its group."""
    doc = yaml.safe_load(ALERTS.read_text())
    return [(g["name"], r) for g in doc["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def label_values(query: str) -> tuple[str, str]:
    """A Grafana ``label_values(selector, label)`` query as (selector, label)."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert m, query
    return m[1], m[2]


def queries() -> list[tuple[str, str, set[str]]]:
    """Every PromQL query in deploy/ as (where, expr, labels the query needs on its series beyond
    those the expression names): rule and panel expressions, and the variables' label_values."""
    out: list[tuple[str, str, set[str]]] = [(f"rule {r['alert']}", r["expr"], set()) for _, r in rules()]
    dash = dashboard()
    for p in panels(dash):
        out += [(f"panel {p['title']!r}", t["expr"], set()) for t in p.get("targets", [])]
    for name, v in variables(dash).items():
        if v["type"] == "query":
            selector, label = label_values(v["query"]["query"])
            out.append((f"variable {name}", selector, {label}))
    return out


# ---- a small reader of the PromQL these files use ----------------------------------------------

SERIES = re.compile(r"\b(hearth_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
BY = re.compile(r"\bby\s*\(([^)]*)\)")
AGGREGATION = re.compile(r"\b(?:sum|max|min|avg|count)\s*(?:by\s*\([^)]*\)\s*)?\(")
# Vector matching and `without` change which labels a result has; the reader does not follow
# them, so the files must not use them (a test says so).
UNFOLLOWED = re.compile(r"\b(?:without|on|ignoring|group_left|group_right)\s*\(")


def group_at(expr: str, start: int) -> str:
    """The text of the balanced parenthesised group opening at ``expr[start]``."""
    assert expr[start] == "(", expr
    depth = 0
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[start : i + 1]
    raise AssertionError(f"unbalanced parentheses: {expr}")


def group_before(expr: str, end: int) -> str:
    """The balanced parenthesised group closing just before ``expr[end]`` (spaces skipped)."""
    i = len(expr[:end].rstrip()) - 1
    assert expr[i] == ")", expr
    depth = 0
    for j in range(i, -1, -1):
        depth += {")": 1, "(": -1}.get(expr[j], 0)
        if depth == 0:
            return expr[j : i + 1]
    raise AssertionError(f"unbalanced parentheses: {expr}")


def by_clauses(expr: str) -> list[tuple[set[str], str]]:
    """Each ``by (labels)`` with the expression it aggregates: ``sum by (l) (x)`` or ``sum(x) by (l)``."""
    out = []
    for m in BY.finditer(expr):
        labels = {label.strip() for label in m[1].split(",") if label.strip()}
        rest = expr[m.end() :].lstrip()
        arg = group_at(rest, 0) if rest.startswith("(") else group_before(expr, m.start())
        out.append((labels, arg))
    return out


def references(expr: str) -> list[tuple[str, set[str]]]:
    """Each Hearth series ``expr`` reads, with the labels it needs there: those of its matchers,
    and those of every ``by`` that aggregates it."""
    refs = [(m[1], set(MATCHER.findall(m[2] or ""))) for m in SERIES.finditer(expr)]
    for labels, arg in by_clauses(expr):
        refs += [(m[1], labels) for m in SERIES.finditer(arg)]
    return refs


def result_labels(expr: str, exposed: dict[str, set[str]]) -> set[str]:
    """The labels of the series ``expr`` returns: those every ``by`` keeps (``le`` is consumed by
    histogram_quantile), none after an aggregation without ``by``, else those of the series read
    plus the target's."""
    clauses = by_clauses(expr)
    if clauses:
        return set.intersection(*(labels for labels, _ in clauses)) - {"le"}
    if AGGREGATION.search(expr):
        return set()
    names = {m[1] for m in SERIES.finditer(expr)}
    return set().union(*(exposed.get(n, set()) for n in names)) | TARGET_LABELS


def test_the_promql_reader_finds_series_matchers_and_by_labels() -> None:
    expr = (
        'sum by (model) (rate(hearth_request_errors_total{reason=~"a|b", tenant="x"}[5m]))'
        " / sum(rate(hearth_requests_total[5m])) by (model, tenant)"
    )
    assert sorted(references(expr), key=lambda r: (r[0], sorted(r[1]))) == [
        ("hearth_request_errors_total", {"model"}),
        ("hearth_request_errors_total", {"reason", "tenant"}),
        ("hearth_requests_total", set()),
        ("hearth_requests_total", {"model", "tenant"}),
    ]
    assert result_labels(expr, {}) == {"model"}
    assert result_labels("sum(hearth_request_log_pending)", {}) == set()
    assert result_labels("hearth_backend_up == 0", {"hearth_backend_up": {"backend"}}) == {
        "backend",
        "instance",
        "job",
    }


# ---- Prometheus ---------------------------------------------------------------------------------


def test_scrape_config_scrapes_hearth_on_its_default_port_and_path() -> None:
    [job] = yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
    assert job["job_name"] == "hearth"
    assert job["metrics_path"] == "/metrics"
    [static] = job["static_configs"]
    assert [t.rpartition(":")[2] for t in static["targets"]] == [str(DEFAULT_PORT)]


def test_scrape_configs_commented_authorization_is_valid_once_uncommented() -> None:
    lines = SCRAPE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# authorization:")
    for i in (start, start + 1):
        lines[i] = lines[i].replace("# ", "", 1)
    [job] = yaml.safe_load("\n".join(lines))["scrape_configs"]
    assert isinstance(job["authorization"]["credentials"], str)


def test_every_rule_has_an_expression_a_duration_a_severity_and_templated_annotations() -> None:
    names = []
    for group, rule in rules():
        assert {"alert", "expr", "for", "labels", "annotations"} <= rule.keys(), rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
        assert DURATION.match(rule["for"]), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
        assert {"summary", "description"} <= rule["annotations"].keys(), rule
        assert "$labels." in rule["annotations"]["summary"] + rule["annotations"]["description"], rule
        names.append(rule["alert"])
        # Only the host group may read anything but Hearth's metrics and its scrape's `up`.
        if group != "host":
            assert "node_" not in rule["expr"], rule
    assert len(names) == len(set(names))


def test_rules_cover_hearth_and_the_host_it_runs_on() -> None:
    groups: dict[str, set[str]] = {}
    for group, rule in rules():
        groups.setdefault(group, set()).add(rule["alert"])
    assert groups["hearth"] >= {
        "HearthBackendDown",
        "HearthBackendBreakerOpen",
        "HearthSlowResponses",
        "HearthHighErrorRateByModel",
        "HearthHighErrorRateByTenant",
        "HearthRequestsQueued",
        "HearthRequestLogDropping",
    }
    assert groups["host"] == {"HostDiskSpaceLow", "HostMemoryHigh"}
    host = {r["alert"]: r["expr"] for g, r in rules() if g == "host"}
    assert "node_filesystem_avail_bytes" in host["HostDiskSpaceLow"]
    assert "node_memory_MemAvailable_bytes" in host["HostMemoryHigh"]
    assert "node_memory_MemTotal_bytes" in host["HostMemoryHigh"]


# ---- Grafana ------------------------------------------------------------------------------------


def test_dashboard_panels_have_unique_ids_and_tile_24_columns_without_overlap() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 36
    ps = panels(dash)
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for p in ps:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["h"] >= 1, p["title"]
        # Full or half width, so the dashboard reads on a phone too.
        assert g["w"] in (12, 24) and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[x, y]!r}"
                taken[x, y] = p["title"]


def test_dashboard_queries_prometheus_through_a_datasource_variable() -> None:
    dash = dashboard()
    vs = variables(dash)
    assert vs["datasource"]["type"] == "datasource" and vs["datasource"]["query"] == "prometheus"
    assert {"tenant", "model"} <= vs.keys()
    graphs = [p for p in panels(dash) if p["type"] != "row"]
    assert {p["type"] for p in graphs} == {"stat", "timeseries"}
    for p in graphs:
        assert p["targets"], p["title"]
        for source in [p["datasource"], *(t["datasource"] for t in p["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, p["title"]


def test_dashboard_queries_use_only_defined_variables() -> None:
    dash = dashboard()
    defined = variables(dash).keys() | GRAFANA_VARIABLES
    for where, expr, _ in queries():
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined, (where, used - defined)


def test_legends_name_only_labels_the_query_keeps() -> None:
    for p in panels(dashboard()):
        for t in p.get("targets", []):
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t["legendFormat"]))
            kept = result_labels(t["expr"], {})
            assert used <= kept, (p["title"], used - kept)


def test_queries_use_no_vector_matching_the_checks_cannot_follow() -> None:
    for where, expr, _ in queries():
        assert not UNFOLLOWED.search(expr), where


# ---- against a running Hearth -------------------------------------------------------------------


def chat(url: str, model: str = MODEL) -> httpx.Response:
    body = {
        "model": model,
        "stream": False,
        "messages": [{"role": "user", "content": "how warm is the living room"}],
        "options": {"num_predict": 2},
    }
    return httpx.post(url + "/api/chat", json=body, timeout=30)


def scrape(hearth: LiveHearth) -> str:
    resp = httpx.get(hearth.url + "/metrics")
    assert resp.status_code == 200, resp.text
    return resp.text


def queue_depth_shows(hearth: LiveHearth) -> str | None:
    text = scrape(hearth)
    return text if re.search(r"^hearth_queue_depth\{", text, re.MULTILINE) else None


@pytest.fixture(scope="module")
def exposition() -> list[tuple[str, str, str, set[str]]]:
    """Hearth's /metrics while a call waits in the queue, and after calls that succeeded and
    failed: every sample as (sample name, family name, family type, label names)."""
    # LiveHearth itself rather than the function-scoped `live`: one server for the module.
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        settings = make_settings([{"name": "o", "kind": "ollama", "url": o.url, "num_parallel": 1}])
        with LiveHearth(settings) as hearth, concurrent.futures.ThreadPoolExecutor(2) as bg:
            o.hold()
            try:
                first = bg.submit(chat, hearth.url)
                assert o.wait_in_flight(1)
                second = bg.submit(chat, hearth.url)  # waits for the one slot
                busy = eventually(lambda: queue_depth_shows(hearth))
            finally:
                o.release()
            assert busy, "no call showed in hearth_queue_depth"
            assert first.result(10).status_code == 200
            assert second.result(10).status_code == 200
            assert chat(hearth.url, model="no-such-model").status_code == 404
            after = scrape(hearth)
    return [
        (s.name, f.name, f.type, set(s.labels))
        for text in (busy, after)
        for f in text_string_to_metric_families(text)
        for s in f.samples
    ]


def exposed_series(exposition: list[tuple[str, str, str, set[str]]]) -> dict[str, set[str]]:
    """Sample name -> the label names its samples carry."""
    out: dict[str, set[str]] = {}
    for name, _, _, labels in exposition:
        out.setdefault(name, set()).update(labels)
    return out


def test_every_hearth_metric_and_label_deploy_queries_is_exported(
    exposition: list[tuple[str, str, str, set[str]]],
) -> None:
    exposed = exposed_series(exposition)
    for where, expr, needs in queries():
        for name, labels in references(expr):
            # A sample name, not a family name: PromQL reads hearth_requests_total (the family is
            # hearth_requests) and hearth_request_duration_seconds_bucket. Labels are checked on
            # samples, so a family exported without samples could not pass.
            assert name in exposed, f"{where}: {name} is not in Hearth's /metrics"
            missing = (labels | needs) - exposed[name]
            assert not missing, f"{where}: {name} has no label {sorted(missing)}"


def test_series_are_read_as_their_type_allows(exposition: list[tuple[str, str, str, set[str]]]) -> None:
    """rate() and increase() read counters (``_total``) or histogram series, histogram_quantile
    reads ``_bucket`` series, and gauges are read as they are."""
    kind = {name: (family, type_) for name, family, type_, _ in exposition}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for where, expr, _ in queries():
        for name, _ in references(expr):
            assert name in kind, f"{where}: {name} is not in Hearth's /metrics"
            family, type_ = kind[name]
            assert name.removeprefix(family) in suffixes[type_], (where, name, type_)
        for m in re.finditer(r"\b(?:rate|increase)\(\s*(hearth_\w+)", expr):
            assert kind[m[1]][1] in {"counter", "histogram"}, (where, m[1])
        for m in re.finditer(r"\bhistogram_quantile\s*\(", expr):
            arg = group_at(expr, m.end() - 1)
            names = [s[1] for s in SERIES.finditer(arg)]
            assert names and all(kind[n][1] == "histogram" and n.endswith("_bucket") for n in names), where


def test_alert_annotations_name_only_labels_the_alert_carries(
    exposition: list[tuple[str, str, str, set[str]]],
) -> None:
    exposed = exposed_series(exposition)
    for group, rule in rules():
        if group == "host":
            continue  # node_exporter's labels: not checked here
        used = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
        carried = result_labels(rule["expr"], exposed)
        assert used <= carried, (rule["alert"], used - carried)
