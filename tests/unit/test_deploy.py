"""Checks of the deployment files: compose, Dockerfile, Prometheus, Alertmanager and Grafana.

No service runs here. promtool and amtool (Debian packages `prometheus` and
`prometheus-alertmanager`) are required; docker-compose is used when installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RULES_FILE = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST_FILE = DEPLOY / "prometheus" / "tests" / "rules_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "luxor-etl.json"
GRAFANA_DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "luxor-etl.yml"

# The metric contract of SPEC.md ("Prometheus metrics"); the histogram brings its series.
SPEC_METRICS = frozenset(
    {
        "luxor_workers",
        "luxor_hashrate_hashes_per_second",
        "luxor_cache_age_seconds",
        "luxor_poll_last_success_timestamp_seconds",
        "luxor_poll_duration_seconds_bucket",
        "luxor_poll_duration_seconds_sum",
        "luxor_poll_duration_seconds_count",
        "luxor_api_requests_total",
        "luxor_alerts_total",
    }
)
SCRAPE_METRICS = frozenset({"up"})

CORE_SERVICES = {"postgres", "redis", "migrate", "worker", "beat", "exporter", "simulator"}
OBSERVABILITY_SERVICES = {"prometheus", "alertmanager", "grafana"}
PIPELINE_SERVICES = ("worker", "beat", "exporter")
ONE_SHOT_SERVICES = {"migrate"}
REQUIRED_ALERTS = {
    "LuxorWorkersDrop",
    "LuxorFleetWorkersDrop",
    "LuxorCacheStale",
    "LuxorPollFailing",
    "LuxorApiErrors",
    "LuxorExporterDown",
    "LuxorAlertDeliveryFailing",
}
# Values a compose default may carry for a secret: the simulator's fake key and the
# throw-away local passwords. Anything real comes from `.env`.
DEV_DEFAULTS = {"", "sim-key", "postgres", "admin"}
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|WEBHOOK_URL)$")
SECRET_SHAPES = [
    re.compile(r"hooks\.slack\.com/services/T\w+"),
    re.compile(r"\bxox[abpr]-[\w-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    # A long token mixing upper case, lower case and digits, as issued API keys look.
    re.compile(r"(?<![\w/+-])(?=[\w+/=-]*[A-Z])(?=[\w+/=-]*[a-z])(?=[\w+/=-]*\d)[\w+/-]{32,}"),
]

_PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label names, functions and keywords left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"'(?:\\.|[^'\\])*'", "''", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} not found on PATH: apt-get install {package}"
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def compose_default(value: Any) -> Any:
    """The value compose gives `${VAR:-default}` when VAR is unset."""
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def port_map(service: dict[str, Any]) -> dict[int, str]:
    """Container port to host binding, from short-syntax `ports` entries."""
    ports: dict[int, str] = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        ports[int(container.split("/")[0])] = host
    return ports


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path to source, from short-syntax `volumes` entries."""
    result = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        result[target] = source
    return result


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def recorded_names(rules: dict[str, Any]) -> set[str]:
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


@pytest.fixture(scope="module")
def alert_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p.get("type") != "row"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


# --- PromQL parsing -------------------------------------------------------------------------------


def test_promql_metric_names_skips_labels_functions_and_variables() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{currency=~"$currency"}'
        "[$__rate_interval]))) / on (job) group_left b:rec:sum offset 15m > 1e3"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b:rec:sum"}
    assert promql_metric_names('time() - c{status="active"}') == {"c"}


# --- docker-compose.yml --------------------------------------------------------------------


def test_compose_defines_the_stack(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == CORE_SERVICES | OBSERVABILITY_SERVICES


@pytest.mark.parametrize("name", sorted(CORE_SERVICES | OBSERVABILITY_SERVICES))
def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"{name} has no healthcheck"
    if name in ONE_SHOT_SERVICES:
        # Its exit status is its health: the others wait for service_completed_successfully.
        assert check == {"disable": True}
        return
    assert not check.get("disable"), f"{name} disables its healthcheck"
    test = check["test"]
    assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, test
    assert check.get("interval") and check.get("retries"), check


def test_healthchecks_fit_the_images(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    for name in ("worker", "beat"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "luxor-etl", "status", "--health"]
    # python:3.11-slim has no curl: the exporter is probed with urllib.
    exporter_check = " ".join(services["exporter"]["healthcheck"]["test"])
    assert "urllib" in exporter_check and "/healthz" in exporter_check
    assert "curl" not in exporter_check
    assert "8099" in " ".join(services["simulator"]["healthcheck"]["test"])


def test_migrate_is_a_one_shot_the_pipeline_waits_for(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in PIPELINE_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    for name, service in services.items():
        assert "migrate" not in (service.get("command") or []) or name == "migrate"


def test_luxor_services_run_the_cli_from_one_image(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "migrate": "migrate",
        "worker": "worker",
        "beat": "beat",
        "exporter": "exporter",
        "simulator": "simulate",
    }
    images = set()
    for name, subcommand in expected.items():
        service = services[name]
        assert service["command"][0] == subcommand, name
        assert service["build"] == ".", name
        images.add(service["image"])
    assert len(images) == 1
    assert services["simulator"]["command"] == [
        "simulate",
        "--host",
        "0.0.0.0",
        "--port",
        "8099",
        "--subaccounts",
        "5",
        "--workers",
        "200",
    ]


def test_shared_environment_comes_from_the_anchor(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "x-luxor-env: &luxor-env" in text
    assert text.count("*luxor-env") >= 4
    env = compose["x-luxor-env"]
    assert compose_default(env["DATABASE_URL"]) == (
        "postgresql+psycopg://postgres:postgres@postgres:5432/luxor_etl"
    )
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    for name in ("migrate", *PIPELINE_SERVICES):
        service_env = services[name]["environment"]
        for key, value in env.items():
            assert service_env.get(key) == value, (name, key)
    assert services["exporter"]["environment"]["METRICS_ADDR"] == "0.0.0.0"
    assert str(env["METRICS_PORT"]) == "9808"


def test_default_luxor_is_the_simulator(compose: dict[str, Any]) -> None:
    env = compose["x-luxor-env"]
    assert compose_default(env["LUXOR_BASE_URL"]) == "http://simulator:8099/api/v2"
    assert env["LUXOR_API_KEY"] == "${LUXOR_API_KEY:-sim-key}"
    assert ".env" in COMPOSE_FILE.read_text(encoding="utf-8")


def test_observability_profile(services: dict[str, dict[str, Any]]) -> None:
    for name in OBSERVABILITY_SERVICES:
        assert services[name]["profiles"] == ["observability"], name
    for name in CORE_SERVICES:
        assert "profiles" not in services[name], name
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "exporter": 9808,
        "simulator": 8099,
        "prometheus": 9090,
        "alertmanager": 9093,
        "grafana": 3000,
    }
    for name, port in expected.items():
        ports = port_map(services[name])
        assert list(ports) == [port], (name, ports)
        assert ports[port].endswith(str(port)), (name, ports)
    for name in ("postgres", "redis", "migrate", "worker", "beat"):
        assert not services[name].get("ports"), name


def test_observability_services_use_the_deploy_files(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert mounts(prometheus)["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    alertmanager = services["alertmanager"]
    assert mounts(alertmanager)["/etc/alertmanager"] == "./deploy/alertmanager"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    grafana = services["grafana"]
    grafana_mounts = mounts(grafana)
    assert grafana_mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provider = yaml.safe_load(GRAFANA_DASHBOARD_PROVIDER.read_text(encoding="utf-8"))
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert grafana_mounts[dashboards_path] == "./deploy/grafana/dashboards"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_no_real_secrets(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    environments = [("x-luxor-env", compose["x-luxor-env"])]
    environments += [(n, s.get("environment") or {}) for n, s in services.items()]
    for owner, env in environments:
        for key, value in env.items():
            if SECRET_NAME.search(key):
                if value is None:
                    continue
                match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(value))
                assert match, f"{owner}: {key} must come from .env, not be written here"
                assert match.group(2) in DEV_DEFAULTS, f"{owner}: {key} default looks real"
    files = [COMPOSE_FILE, DOCKERFILE, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for shape in SECRET_SHAPES:
            found = shape.search(text)
            assert found is None, f"{path.relative_to(ROOT)}: secret-like {found.group()!r}"


def test_compose_config_is_valid() -> None:
    assert shutil.which("docker-compose"), "needs docker-compose: apt-get install docker-compose"
    run("docker-compose", "-f", "docker-compose.yml", "config", "-q")
    proc = run(
        "docker-compose",
        "-f",
        "docker-compose.yml",
        "--profile",
        "observability",
        "config",
        "--services",
    )
    assert set(proc.stdout.split()) == CORE_SERVICES | OBSERVABILITY_SERVICES


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert bases and all(base == "python:3.11-slim" for base in bases), bases
    assert re.search(r"^RUN pip install \.$", text, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0", "0:0"}, users
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", text, flags=re.MULTILINE)
    assert entrypoints and json.loads(entrypoints[-1]) == ["luxor-etl"]
    assert "curl" not in text


# --- Prometheus ----------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    run(promtool, "check", "rules", str(RULES_FILE.relative_to(ROOT)))


def test_promtool_test_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    run(promtool, "test", "rules", str(RULES_TEST_FILE.relative_to(ROOT)))


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool", "prometheus")
    proc = run(promtool, "check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert "1 rule files found" in proc.stdout + proc.stderr


def test_prometheus_config_targets() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["luxor-etl"]["static_configs"] for t in sc["targets"]]
    assert targets == ["exporter:9808"]
    managers = [
        t
        for am in config["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert managers == ["alertmanager:9093"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).resolve() == RULES_FILE.resolve()


def test_alert_rules_are_labelled_and_annotated(alert_rules: list[dict[str, Any]]) -> None:
    assert {r["alert"] for r in alert_rules} >= REQUIRED_ALERTS
    for rule in alert_rules:
        assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook_url"}, rule["alert"]
        assert annotations["runbook_url"].startswith("https://"), rule["alert"]
        assert rule.get("for"), f"{rule['alert']} has no `for`"


def test_alert_thresholds(alert_rules: list[dict[str, Any]]) -> None:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for rule in alert_rules:
        by_name.setdefault(rule["alert"], []).append(rule)
    drop = by_name["LuxorWorkersDrop"][0]
    assert "0.9 * max_over_time(" in drop["expr"] and "[15m]" in drop["expr"]
    assert ">= 3" in drop["expr"] and drop["for"] == "2m"
    fleet = by_name["LuxorFleetWorkersDrop"][0]
    assert "max_over_time(luxor:workers_active:sum[15m])" in fleet["expr"]
    assert fleet["for"] == "2m"
    assert "luxor_cache_age_seconds > 600" in by_name["LuxorCacheStale"][0]["expr"]
    assert "> 600" in by_name["LuxorPollFailing"][0]["expr"]
    assert 'up{job="luxor-etl"} == 0' in by_name["LuxorExporterDown"][0]["expr"]
    assert 'result="failed"' in by_name["LuxorAlertDeliveryFailing"][0]["expr"]


def test_rule_expressions_use_known_metrics(
    rules: dict[str, Any], recorded_names: set[str]
) -> None:
    assert "luxor:workers_active:sum" in recorded_names
    allowed = SPEC_METRICS | SCRAPE_METRICS | recorded_names
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = promql_metric_names(rule["expr"])
            assert names, rule
            assert names <= allowed, (rule.get("alert") or rule.get("record"), names - allowed)


def test_every_alert_has_firing_and_quiet_cases(alert_rules: list[dict[str, Any]]) -> None:
    cases = yaml.safe_load(RULES_TEST_FILE.read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alert_rules}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


def test_subaccount_drop_case_names_the_subaccount() -> None:
    cases = yaml.safe_load(RULES_TEST_FILE.read_text(encoding="utf-8"))
    fired = [
        alert
        for test in cases["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == "LuxorWorkersDrop"
        for alert in case.get("exp_alerts") or []
    ]
    assert fired
    for alert in fired:
        subaccount = alert["exp_labels"]["subaccount"]
        assert subaccount in alert["exp_annotations"]["summary"]
        assert subaccount in alert["exp_annotations"]["description"]


# --- Alertmanager --------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    amtool = require_tool("amtool", "prometheus-alertmanager")
    run(amtool, "check-config", str(ALERTMANAGER_CONFIG.relative_to(ROOT)))


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=LuxorWorkersDrop"], "oncall-page"),
        (["severity=warning", "alertname=LuxorCacheStale"], "oncall-warning"),
        (["severity=critical", "alertname=LuxorWorkersDrop", "source=luxor-etl"], "oncall-page"),
        (["severity=error", "alertname=LuxorDataStale", "source=luxor-etl"], "oncall-warning"),
        (["alertname=Other"], "null"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    amtool = require_tool("amtool", "prometheus-alertmanager")
    proc = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG.relative_to(ROOT)}",
        *labels,
    )
    assert proc.stdout.split() == [receiver]


def test_alertmanager_inhibits_warnings_under_a_page() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    assert any(
        rule.get("source_matchers") == ['severity=~"page|critical"']
        and rule.get("target_matchers") == ['severity=~"warning|error"']
        for rule in config["inhibit_rules"]
    )


# --- Grafana -------------------------------------------------------------------------------


def test_dashboard_queries_use_known_metrics(
    dashboard: dict[str, Any], recorded_names: set[str]
) -> None:
    allowed = SPEC_METRICS | SCRAPE_METRICS | recorded_names
    exprs = dashboard_exprs(dashboard)
    assert exprs
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= allowed, (expr, names - allowed)


def test_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    datasource = yaml.safe_load(GRAFANA_DATASOURCE.read_text(encoding="utf-8"))["datasources"][0]
    assert datasource["uid"] == "prometheus"
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    panels = dashboard_panels(dashboard)
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) >= {"currency", "subaccount"}
    for variable in variables.values():
        assert variable["datasource"]["uid"] == "prometheus"
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match and match.group(2) == variable["name"], query
        assert promql_metric_names(match.group(1)) <= SPEC_METRICS
    assert "$currency" in variables["subaccount"]["definition"]
    for expr in dashboard_exprs(dashboard):
        if "luxor_workers{" in expr or "luxor_hashrate_hashes_per_second{" in expr:
            assert 'currency=~"$currency"' in expr and 'subaccount=~"$subaccount"' in expr, expr


def test_dashboard_covers_the_pipeline(dashboard: dict[str, Any]) -> None:
    exprs = dashboard_exprs(dashboard)
    joined = "\n".join(exprs)
    for status in ("active", "inactive"):
        assert any(
            f'status="{status}"' in e and "subaccount" in e and "luxor_workers" in e for e in exprs
        ), status
    assert "luxor:workers_active:sum" in joined
    assert "luxor:workers_inactive:sum" in joined
    assert "luxor_hashrate_hashes_per_second" in joined
    assert "luxor_cache_age_seconds" in joined
    assert "luxor_poll_last_success_timestamp_seconds" in joined
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({quantile},")
            and "luxor_poll_duration_seconds_bucket" in e
            for e in exprs
        ), quantile
    assert any(
        re.search(r"by \([^)]*\bcode\b", e) and "luxor_api_requests_total" in e for e in exprs
    )
    assert any(re.search(r"by \([^)]*\bresult\b", e) and "luxor_alerts_total" in e for e in exprs)
