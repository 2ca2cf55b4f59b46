"""The monitoring configuration: Prometheus (scrape config, alert rules and their unit tests),
Alertmanager (routing by severity), Grafana (provisioning, dashboard), the `monitoring` Compose
profile and the runbooks in docs/operations.md.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages, and
node_exporter (the disk alert's metrics, scraped for real) from `prometheus-node-exporter`; the
tests that need them fail (never skip) when they are missing. No Docker engine is needed.

``metric_names_used()`` / ``innera_metric_names_used()`` list the metric names the alerts and the
dashboard query; a live test of GET /metrics can import them.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_compose import compose_errors

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "conf" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTS_YML = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_YML = PROMETHEUS_DIR / "alerts.test.yml"
MONITORING_COMPOSE = PROMETHEUS_DIR / "compose.monitoring.yml"
ALERTMANAGER_YML = ROOT / "conf" / "alertmanager" / "alertmanager.yml"
GRAFANA_DIR = ROOT / "conf" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
OPERATIONS_MD = ROOT / "docs" / "operations.md"
COMPOSE = ROOT / "docker-compose.yml"

INSTALL_HINT = (
    ".ci/run installs it: apt-get update && apt-get install -y --no-install-recommends "
    "prometheus prometheus-alertmanager prometheus-node-exporter"
)

# The metric contract of GET /metrics (route metrics use the fastify-metrics names).
INNERA_METRICS = frozenset(
    {
        "http_request_duration_seconds",
        "http_requests_total",
        "innera_entries_created_total",
        "innera_search_duration_seconds",
        "innera_db_pool_active",
        "innera_db_pool_idle",
        "innera_db_pool_waiting",
        "innera_db_pool_max",
        "innera_ws_connections_active",
        "innera_redis_errors_total",
        "innera_push_notifications_sent_total",
        "innera_push_notifications_failed_total",
        "innera_crypto_errors_total",
        "innera_key_service_errors_total",
        "innera_account_deletion_jobs_failed_total",
        "innera_key_rotation_progress",
        "innera_jobs_processed_total",
        "innera_job_duration_seconds",
        "innera_jobs_waiting",
        "innera_active_users",
        # named queries: innera's own, beside the spec's (docs/operations.md, "Metrics")
        "innera_db_query_duration_seconds",
        "innera_db_query_errors_total",
        # prometheus-client's default process metrics
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    }
)
# Written by Prometheus itself (`up`) or scraped from node_exporter (job "node"), not by innera.
NOT_FROM_INNERA = frozenset({"up", "node_filesystem_avail_bytes", "node_filesystem_size_bytes"})

EXPECTED_SEVERITY = {
    "InneraDown": "critical",
    "InneraHigh5xxRate": "critical",
    "InneraDBPoolNearExhaustion": "critical",
    "InneraDBPoolWaiting": "critical",
    "InneraRedisConnectionErrors": "critical",
    "InneraCryptoErrors": "critical",
    "InneraAccountDeletionJobsFailed": "critical",
    "InneraHighLatencyP95": "warning",
    "InneraHighLatencyP99": "warning",
    "InneraPushFailureSpike": "warning",
    "InneraSearchLatencyHigh": "warning",
    "DiskAlmostFull": "warning",
    "InneraWebSocketConnectionsDropped": "info",
    "InneraKeyRotationInProgress": "info",
}


# --- helpers -------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS_YML)["groups"] for rule in group["rules"]]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for dashboard in DASHBOARDS
        for panel in json.loads(dashboard.read_text(encoding="utf-8"))["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"(?<![\w:])(?:(?:innera|http|process|node)_\w+|up)(?![\w:])")
_HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names (innera_*, http_*, process_*, node_*, up) a PromQL expression selects;
    histogram series suffixes (_bucket, _sum, _count) are stripped."""
    without_strings = _STRING.sub('""', expr)
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _METRIC.findall(without_strings)}


@cache
def _metric_names_used() -> frozenset[str]:
    exprs = [rule["expr"] for rule in _rules()] + _dashboard_exprs()
    return frozenset(name for expr in exprs for name in promql_metric_names(expr))


def metric_names_used() -> set[str]:
    """Every metric name used by conf/prometheus/alerts.yml and the Grafana dashboards."""
    return set(_metric_names_used())


def innera_metric_names_used() -> set[str]:
    """The names of ``metric_names_used()`` that innera's own GET /metrics must expose
    (without ``up`` and node_exporter's metrics)."""
    return metric_names_used() - NOT_FROM_INNERA


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH; {INSTALL_HINT}", pytrace=False)
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [_tool(argv[0]), *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def _doc_anchors() -> set[str]:
    text = OPERATIONS_MD.read_text(encoding="utf-8")
    return {_github_anchor(m) for m in re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE)}


# --- promtool / amtool ---------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    _run("promtool", "check", "rules", str(ALERTS_YML.relative_to(ROOT)))


def test_promtool_check_config() -> None:
    _run("promtool", "check", "config", str(PROMETHEUS_YML.relative_to(ROOT)))


def test_promtool_rule_unit_tests() -> None:
    result = _run("promtool", "test", "rules", str(ALERTS_TEST_YML.relative_to(ROOT)))
    assert "SUCCESS" in result.stdout


def test_amtool_check_config() -> None:
    _run("amtool", "check-config", str(ALERTMANAGER_YML.relative_to(ROOT)))


@pytest.mark.parametrize(
    ("severity", "receiver"),
    [("critical", "pagerduty"), ("warning", "slack"), ("info", "null")],
)
def test_alertmanager_routes_by_severity(severity: str, receiver: str) -> None:
    result = _run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_YML.relative_to(ROOT)}",
        f"--verify.receivers={receiver}",
        f"severity={severity}",
    )
    assert result.stdout.split() == [receiver]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    grafana_vars = re.compile(r"\$__(?:rate_interval|interval|range)|\$\{__\w+\}")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_vars.sub("5m", expr)}
        for i, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run("promtool", "check", "rules", str(path))


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_scrapes_innera_and_node_exporter() -> None:
    config = _yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    innera = jobs["innera"]
    assert innera["metrics_path"] == "/metrics"
    assert innera.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    assert [t for sc in innera["static_configs"] for t in sc["targets"]] == ["api:3000"]
    # `innera worker` processes: their metrics port, under the same job label (the alerts
    # select job="innera")
    worker = jobs["innera-worker"]
    assert worker["metrics_path"] == "/metrics"
    assert worker.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    assert [sd["port"] for sd in worker["dns_sd_configs"]] == [9091]
    relabelled = {r["target_label"]: r["replacement"] for r in worker["relabel_configs"]}
    assert relabelled == {"job": "innera", "process": "worker"}
    assert "node" in jobs
    assert config["rule_files"] == ["alerts.yml"]
    targets = [
        t
        for am in config["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"]


def test_every_spec_alert_exists_with_its_severity() -> None:
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in _alert_rules()}
    assert severities == EXPECTED_SEVERITY


def test_alerts_have_annotations_and_runbooks_that_exist() -> None:
    anchors = _doc_anchors()
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in _alert_rules():
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"no heading for #{anchor} in docs/operations.md"


def test_spec_thresholds_are_in_the_rules() -> None:
    expr = {rule["alert"]: " ".join(rule["expr"].split()) for rule in _alert_rules()}
    assert 'status_code=~"5.."' in expr["InneraHigh5xxRate"]
    assert "[5m]" in expr["InneraHigh5xxRate"] and expr["InneraHigh5xxRate"].endswith("> 0.01")
    for name, quantile, threshold in [
        ("InneraHighLatencyP95", "0.95", "> 2"),
        ("InneraHighLatencyP99", "0.99", "> 5"),
    ]:
        assert f"histogram_quantile({quantile}," in expr[name]
        assert "sum by (le, route) (rate(http_request_duration_seconds_bucket" in expr[name]
        assert expr[name].endswith(threshold)
    assert expr["InneraSearchLatencyHigh"].startswith("histogram_quantile(0.95,")
    assert expr["InneraSearchLatencyHigh"].endswith("> 5")
    assert expr["InneraDBPoolNearExhaustion"].endswith("> 0.8")
    assert expr["InneraDBPoolWaiting"].endswith("> 0")
    assert "increase(innera_redis_errors_total" in expr["InneraRedisConnectionErrors"]
    assert "[1m]" in expr["InneraRedisConnectionErrors"]
    assert expr["InneraPushFailureSpike"].endswith("> 0.1")
    assert expr["DiskAlmostFull"].endswith("> 0.8")
    for ratio in ("InneraHigh5xxRate", "InneraPushFailureSpike", "InneraDBPoolNearExhaustion"):
        assert "clamp_min(" in expr[ratio], f"{ratio} can divide by zero"
    fors = {rule["alert"]: rule.get("for") for rule in _alert_rules()}
    assert fors["InneraDBPoolWaiting"] == "1m"
    for immediate in ("InneraCryptoErrors", "InneraAccountDeletionJobsFailed"):
        assert fors[immediate] is None, f"{immediate} must alert immediately"


def test_the_dashboards_push_failure_ratio_is_the_alerts() -> None:
    """Unregistered tokens (apps uninstalled) are left out of both."""
    (alert,) = [r for r in _alert_rules() if r["alert"] == "InneraPushFailureSpike"]
    (ratio,) = [e for e in _dashboard_exprs()
                if "innera_push_notifications_failed_total" in e and "clamp_min" in e]
    for expr in (alert["expr"], ratio):
        failed = re.findall(r"innera_push_notifications_failed_total\{([^}]*)\}", expr)
        assert len(failed) == 2 and all('reason!="unregistered"' in f for f in failed), expr


def test_key_rotation_progress_is_recorded_as_the_highest_report() -> None:
    """Only one instance runs the rotation; the others report 0 (alerts.test.yml has the
    case with several instances)."""
    recorded = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    assert recorded["innera:key_rotation_progress:max"].startswith("max by (job) (")
    assert "innera:key_rotation_progress:min" not in recorded


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _yaml(ALERTS_TEST_YML)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                assert alert["exp_labels"]["severity"] == EXPECTED_SEVERITY[check["alertname"]]
    assert firing == set(EXPECTED_SEVERITY), f"no firing case: {set(EXPECTED_SEVERITY) - firing}"
    assert quiet == set(EXPECTED_SEVERITY), f"no quiet case: {set(EXPECTED_SEVERITY) - quiet}"


# --- metric names --------------------------------------------------------------------------


def test_promql_metric_names_parser() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket"
        '{job="innera", route="/innera_x"}[5m]))) > 2 and on (job) up == 1'
        " unless innera:ws_connections_active:sum"
    )
    assert promql_metric_names(expr) == {"http_request_duration_seconds", "up"}


def test_metric_names_used_are_in_the_contract() -> None:
    used = metric_names_used()
    assert "http_requests_total" in used and "innera_db_pool_max" in used
    unknown = used - INNERA_METRICS - NOT_FROM_INNERA
    assert not unknown, f"metrics outside the /metrics contract: {sorted(unknown)}"
    assert innera_metric_names_used() <= INNERA_METRICS


# --- Alertmanager --------------------------------------------------------------------------


def test_alertmanager_receivers_and_inhibition() -> None:
    config = _yaml(ALERTMANAGER_YML)
    receivers = {r["name"]: r for r in config["receivers"]}
    assert set(receivers) == {"pagerduty", "slack", "null"}
    pagerduty = receivers["pagerduty"]["pagerduty_configs"][0]
    assert pagerduty["routing_key"] == "<PAGERDUTY_ROUTING_KEY>"
    slack = receivers["slack"]["slack_configs"][0]
    assert slack["channel"] == "#innera-alerts" and slack["api_url"]
    assert set(receivers["null"]) == {"name"}, "the null receiver must not notify"
    (inhibit,) = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ['severity="critical"']
    assert inhibit["target_matchers"] == ['severity="warning"']
    assert set(inhibit["equal"]) == {"alertname", "instance"}


# --- Grafana -------------------------------------------------------------------------------


def test_grafana_provisioning() -> None:
    (datasource,) = _yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert (datasource["uid"], datasource["type"]) == ("prometheus", "prometheus")
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = _yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "innera.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_panels_all_have_promql_targets() -> None:
    assert [d.name for d in DASHBOARDS] == ["innera.json"]
    dashboard = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert panels
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
    used = {name for p in panels for t in p["targets"] for name in promql_metric_names(t["expr"])}
    for required in (
        "http_requests_total",
        "http_request_duration_seconds",
        "innera_db_pool_active",
        "innera_db_pool_waiting",
        "innera_db_pool_max",
        "innera_redis_errors_total",
        "innera_ws_connections_active",
        "innera_jobs_processed_total",
        "innera_jobs_waiting",
        "innera_search_duration_seconds",
        "innera_key_rotation_progress",
        "innera_entries_created_total",
        "innera_push_notifications_sent_total",
        "innera_push_notifications_failed_total",
        "innera_active_users",
    ):
        assert required in used, f"no dashboard panel shows {required}"


def test_a_panel_shows_the_ten_slowest_query_names_by_p95() -> None:
    """The operator's first look at "slow query or busy pool?": the p95 of each statement
    name, the ten slowest, over every instance."""
    dashboard = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    exprs = {re.sub(r"\s+", "", t["expr"]): p["title"]
             for p in dashboard["panels"] for t in p["targets"]}
    wanted = re.sub(r"\s+", "", 'topk(10, histogram_quantile(0.95, sum by (le, name) '
                    '(rate(innera_db_query_duration_seconds_bucket{job="innera"}[5m]))))')
    assert wanted in exprs, sorted(exprs)
    panel = next(p for p in dashboard["panels"] if p["title"] == exprs[wanted])
    assert panel["targets"][0]["legendFormat"] == "{{name}}"
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"
    # beside the pool panels, on no other panel's place
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    assert len(cells) == len(set(cells))


# --- Compose `monitoring` profile ----------------------------------------------------------


def test_monitoring_compose_profile() -> None:
    compose = _yaml(COMPOSE)
    included = [i if isinstance(i, str) else i["path"] for i in compose.get("include", [])]
    assert "conf/prometheus/compose.monitoring.yml" in included
    monitoring = _yaml(MONITORING_COMPOSE)
    services = monitoring["services"]
    assert set(services) == {"prometheus", "alertmanager", "grafana", "node-exporter"}
    for name, service in services.items():
        assert service["profiles"] == ["monitoring"], name
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest" and re.search(r"\d", tag), name
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["prometheus"]["ports"] == ["9090:9090"]
    assert services["alertmanager"]["ports"] == ["9093:9093"]
    assert services["grafana"]["ports"] == ["3001:3000"]
    # relative paths resolve against the included file's directory (conf/prometheus)
    mounts = {
        name: {v.split(":")[0]: v.split(":")[1] for v in s["volumes"]}
        for name, s in services.items()
    }
    assert mounts["prometheus"]["./"] == "/etc/prometheus"
    assert mounts["alertmanager"]["../alertmanager"] == "/etc/alertmanager"
    assert mounts["grafana"]["../grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["grafana"]["../grafana/dashboards"] == "/var/lib/grafana/dashboards"
    assert mounts["node-exporter"] == {"/": "/host"}
    for source in [s for m in mounts.values() for s in m if s.startswith(".")]:
        assert (MONITORING_COMPOSE.parent / source).is_dir(), source
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:-")
    named = {s for m in mounts.values() for s in m if not s.startswith((".", "/"))}
    assert named == set(monitoring["volumes"])


def test_node_exporter_is_the_node_job_and_reads_the_hosts_filesystems() -> None:
    """The `node` job scrapes the compose service node-exporter on the port node_exporter
    listens on, and that service reports the host's filesystems (the DiskAlmostFull alert's
    metrics) under the host's own mount points: the root mounted read-only at /host with
    --path.rootfs=/host, the host's mount table through pid: host. It stays on the project
    network (Prometheus finds it by name), with no port published."""
    jobs = {job["job_name"]: job for job in _yaml(PROMETHEUS_YML)["scrape_configs"]}
    node_targets = [t for sc in jobs["node"]["static_configs"] for t in sc["targets"]]
    assert node_targets == ["node-exporter:9100"]
    service = _yaml(MONITORING_COMPOSE)["services"]["node-exporter"]
    assert service["image"].startswith("prom/node-exporter:v")
    assert service["profiles"] == ["monitoring"]
    command = service["command"]
    assert "--path.rootfs=/host" in command
    listen = [a for a in command if a.startswith("--web.listen-address")]
    assert listen in ([], ["--web.listen-address=:9100"]), "the node job scrapes port 9100"
    (mount,) = service["volumes"]
    source, target, options = mount.split(":")
    assert (source, target) == ("/", "/host") and "ro" in options.split(",")
    assert service["pid"] == "host"
    assert "network_mode" not in service and "ports" not in service


def _scrape(url: str, deadline_s: float = 10.0) -> str:
    """GET ``url`` until it answers (the exporter is starting) or ``deadline_s`` passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} \S+$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _series(exposition: str, metric: str) -> list[dict[str, str]]:
    """The label sets of ``metric`` in a Prometheus text exposition."""
    found = []
    for line in exposition.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == metric:
            found.append({k: bytes(v, "utf-8").decode("unicode_escape")
                          for k, v in _LABEL.findall(match.group(2))})
    return found


def _selector(metric: str, labels: dict[str, str]) -> str:
    """``metric{k="v", ...}`` (PromQL strings take JSON's escapes)."""
    quoted = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in labels.items())
    return f"{metric}{{{quoted}}}"


def _render(template: str, labels: dict[str, str], value: str) -> str:
    """The alert annotations' template language, as far as DiskAlmostFull uses it."""
    text = re.sub(r"\{\{ *\$labels\.(\w+) *\}\}", lambda m: labels[m.group(1)], template)
    return re.sub(r"\{\{ *\$value \| humanizePercentage *\}\}", value, text)


def test_disk_alert_fires_on_the_series_node_exporter_exports(tmp_path: Path) -> None:
    """The DiskAlmostFull expression selects what node_exporter really exports: a real
    node_exporter (Debian's) is scraped, and promtool evaluates the alert over those very
    series (their label sets, job="node" as Prometheus adds it, 90 % full). It must fire once
    per filesystem the expression keeps, with that filesystem's labels in the alert and its
    annotations; and alerts.test.yml must use only label names node_exporter gives."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exporter = subprocess.Popen(
        [_tool("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{port}",
         "--collector.disable-defaults", "--collector.filesystem"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        exposition = _scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        exporter.terminate()
        exporter.wait(10)
    rule = next(r for r in _alert_rules() if r["alert"] == "DiskAlmostFull")
    used = promql_metric_names(rule["expr"])
    assert used == {"node_filesystem_avail_bytes", "node_filesystem_size_bytes"}
    series = {m: _series(exposition, m) for m in sorted(used)}
    assert all(series.values()), f"node_exporter exported none of {sorted(used)}"
    label_names = {k for sets in series.values() for labels in sets for k in labels}
    # the labels the rule selects on and the annotations print come from node_exporter
    assert {"fstype", "mountpoint", "device"} <= label_names
    excluded = re.search(r'fstype!~"([^"]+)"', rule["expr"])
    assert excluded is not None
    instance = "host:9100"
    filesystems = [{"job": "node", "instance": instance, **labels}
                   for labels in series["node_filesystem_avail_bytes"]]
    kept = [fs for fs in filesystems if not re.fullmatch(excluded.group(1), fs["fstype"])]
    assert kept, "node_exporter exported no filesystem the alert watches"
    test_file = tmp_path / "disk_alert.test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(ALERTS_YML)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                s for fs in filesystems for s in (
                    {"series": _selector("node_filesystem_avail_bytes", fs), "values": "10x15"},
                    {"series": _selector("node_filesystem_size_bytes", fs), "values": "100x15"})],
            "alert_rule_test": [{
                "alertname": "DiskAlmostFull",
                "eval_time": "10m",
                "exp_alerts": [{
                    "exp_labels": {**fs, **rule["labels"]},
                    "exp_annotations": {k: _render(v, fs, "90%")
                                        for k, v in rule["annotations"].items()},
                } for fs in kept],
            }],
        }],
    }))
    result = _run("promtool", "test", "rules", str(test_file))
    assert "SUCCESS" in result.stdout
    # the unit tests in alerts.test.yml speak node_exporter's labels, not invented ones
    for case in _yaml(ALERTS_TEST_YML)["tests"]:
        for item in case.get("input_series", []):
            metric = item["series"].split("{", 1)[0]
            if metric in used:
                names = {k for k, _ in _LABEL.findall(item["series"])}
                assert names - {"job", "instance"} <= label_names, item["series"]


def test_monitoring_compose_file_validates_against_schema() -> None:
    for path in (COMPOSE, MONITORING_COMPOSE):
        errors = compose_errors(_yaml(path))
        assert not errors, f"{path.name}:\n" + "\n".join(errors)
