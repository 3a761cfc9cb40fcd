"""deploy/: the manifests parse, and everything they name exists in the project's configuration.

Images, ports, environment variables, volumes, config references and file mounts are checked
against the settings classes, bentofile.yaml and the files in deploy/. The metric names in the
dashboard and the alert rules are checked against a live scrape in tests/test_loop.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.settings import MonitorSettings
from service.settings import ServeSettings
from tests.servers import need

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
THIRD_PARTY_IMAGES = {"postgres:16", "prom/prometheus:v2.53.0", "grafana/grafana:11.1.0"}
# Variables read by the images themselves (PostgreSQL, Grafana) or by libraries (HF, BentoML).
FOREIGN_ENV = {"HF_HUB_OFFLINE", "BENTOML_DO_NOT_TRACK", "DO_NOT_TRACK", "PGDATA"}
FOREIGN_PREFIXES = ("POSTGRES_", "GF_")


def refit_image() -> str:
    """The image `bentoml containerize refit:latest -t refit:latest` makes (the Bento's name)."""
    return f"{yaml.safe_load((ROOT / 'bentofile.yaml').read_text())['name']}:latest"


def kubernetes_objects() -> list[dict[str, Any]]:
    """Every object of every manifest under deploy/kubernetes/."""
    objects = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def compose() -> dict[str, Any]:
    """deploy/compose.yaml."""
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def check_env_name(name: str) -> None:
    """A variable is a settings field of the service or monitor, or one a library reads."""
    for prefix, settings in (("REFIT_SERVE_", ServeSettings), ("REFIT_MONITOR_", MonitorSettings)):
        if name.startswith(prefix):
            field = name.removeprefix(prefix).lower()
            assert field in settings.model_fields, f"{name}: {settings.__name__} has no field {field!r}"
            return
    assert name in FOREIGN_ENV or name.startswith(FOREIGN_PREFIXES), f"unknown variable {name}"


def check_env_value(name: str, value: str) -> None:
    """The value parses as that settings field (a typo'd mode or a negative size fails here)."""
    if name == "BENTOML_DO_NOT_TRACK":  # BentoML compares it with "true"; "1" leaves tracking on
        assert value.lower() == "true", f"{name}={value!r}"
    for prefix, settings in (("REFIT_SERVE_", ServeSettings), ("REFIT_MONITOR_", MonitorSettings)):
        if name.startswith(prefix):
            settings.model_validate({name.removeprefix(prefix).lower(): value})


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of ``kind`` by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod templates of the Deployments and StatefulSets, by workload name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    }


def test_kubernetes_images_ports_and_workloads() -> None:
    objects = kubernetes_objects()
    pods = pod_templates(objects)
    assert set(pods) == {"refit-service", "refit-monitor", "refit-postgres"}
    deployments = by_kind(objects, "Deployment")
    assert deployments["refit-service"]["spec"]["replicas"] >= 2
    assert deployments["refit-monitor"]["spec"]["replicas"] == 1
    for name, pod in pods.items():
        for container in pod["spec"]["containers"]:
            assert container["image"] in {refit_image()} | THIRD_PARTY_IMAGES, (name, container["image"])
    [service] = pods["refit-service"]["spec"]["containers"]
    assert service["ports"][0]["containerPort"] == ServeSettings.model_fields["port"].default
    assert pods["refit-service"]["metadata"]["annotations"]["prometheus.io/port"] == str(
        ServeSettings.model_fields["port"].default
    )
    [monitor] = pods["refit-monitor"]["spec"]["containers"]
    port = MonitorSettings.model_fields["metrics_port"].default
    assert monitor["ports"][0]["containerPort"] == port
    assert pods["refit-monitor"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert monitor["command"] == ["python", "-m", "monitoring", "monitor"]
    assert (ROOT / "monitoring" / "__main__.py").is_file()
    [hpa] = by_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments


def test_kubernetes_references_resolve() -> None:
    """ConfigMaps, Secrets and their keys, claims, volumes, Service selectors and target ports."""
    objects = kubernetes_objects()
    config_maps, secrets = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    claims = by_kind(objects, "PersistentVolumeClaim")
    for key, value in config_maps["refit-config"]["data"].items():
        check_env_name(key)
        check_env_value(key, value)
    for key, value in secrets["refit-postgres"]["stringData"].items():
        check_env_name(key)
        check_env_value(key, value)
    pods = pod_templates(objects)
    for name, pod in pods.items():
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        templates = {
            t["metadata"]["name"] for o in objects if o["metadata"]["name"] == name and "spec" in o
            for t in o["spec"].get("volumeClaimTemplates", [])
        }  # fmt: skip
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "secret" in volume:  # defined in the manifests, or created as the README says
                name_ = volume["secret"]["secretName"]
                readme = (DEPLOY / "kubernetes" / "README.md").read_text()
                assert name_ in secrets or f"kubectl create secret generic {name_}" in readme, name_
        for container in pod["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for variable in container.get("env", []):
                check_env_name(variable["name"])
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, (name, mount["name"])
                if mount["name"] == "registry":  # the settings point at the mounted registry
                    data = config_maps["refit-config"]["data"]
                    assert mount["mountPath"] == data["REFIT_SERVE_REGISTRY_HOME"]
                    assert mount["mountPath"] == data["REFIT_MONITOR_REGISTRY_HOME"]
    for service in by_kind(objects, "Service").values():
        selector = service["spec"]["selector"]
        matching = [p for p in pods.values() if selector.items() <= p["metadata"]["labels"].items()]
        assert matching, f"Service {service['metadata']['name']} selects no pod"
        port_names = {p.get("name") for c in matching[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_compose_stack() -> None:
    stack = compose()
    services = stack["services"]
    assert set(services) == {"postgres", "service", "monitor", "evidently-ui", "prometheus", "grafana"}
    for name, spec in services.items():
        assert spec["image"] in {refit_image()} | THIRD_PARTY_IMAGES, name
        for key, value in spec.get("environment", {}).items():
            if key == "<<":
                continue
            check_env_name(key)
            check_env_value(key, str(value))
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in stack["volumes"], f"{name} uses undeclared volume {source}"
                if source == "registry":
                    assert target == "/registry"
    assert services["service"]["ports"] == [f"{ServeSettings.model_fields['port'].default}:3000"]
    monitor_port = services["monitor"]["environment"]["REFIT_MONITOR_METRICS_PORT"]
    assert services["monitor"]["ports"] == [f"127.0.0.1:{monitor_port}:{monitor_port}"]


def test_compose_publishes_only_the_authenticated_service_beyond_the_host() -> None:
    stack = compose()
    services = stack["services"]
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert name == "service" or port.startswith("127.0.0.1:"), (name, port)
    service = services["service"]
    assert service["secrets"] == ["api_keys"] and "api_keys" in stack["secrets"]
    assert service["environment"]["REFIT_SERVE_API_KEYS_FILE"] == "/run/secrets/api_keys"
    assert stack["secrets"]["api_keys"]["file"] == "./api-keys.json"
    assert "deploy/api-keys.json" in (ROOT / ".gitignore").read_text().split()
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    workspace = MonitorSettings(registry_home=Path("/registry")).workspace_path
    assert str(workspace) in services["evidently-ui"]["entrypoint"]


def test_prometheus_scrapes_the_ports_the_stack_exposes() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    serve_port = ServeSettings.model_fields["port"].default
    monitor_port = MonitorSettings.model_fields["metrics_port"].default
    assert targets == {
        "refit-service": [f"service:{serve_port}"],
        "refit-monitor": [f"monitor:{monitor_port}"],
    }
    for rule_file in config["rule_files"]:
        rules = yaml.safe_load((DEPLOY / "prometheus" / rule_file).read_text())
        names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
        assert {"RefitDriftPersisting", "RefitRetrainFailed", "RefitSwapFailed", "RefitHigh5xxRate"} <= names


def test_grafana_dashboard_and_provisioning() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "refit.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Serving", "Model", "Drift and retraining"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/refit.yml").read_text())
    mounted = {
        v.split(":")[1]: v.split(":")[0] for v in compose()["services"]["grafana"]["volumes"]
    }  # container path -> host path
    assert mounted[provider["providers"][0]["options"]["path"]] == "./grafana/dashboards"


@pytest.mark.parametrize("name", ["REFIT_SERVE_NO_SUCH", "REFIT_MONITOR_WINDOW", "SOMETHING_ELSE"])
def test_unknown_variables_are_caught(name: str) -> None:
    with pytest.raises(AssertionError):
        check_env_name(name)


def test_promtool_accepts_the_prometheus_config_and_rules() -> None:
    promtool = need("promtool")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        completed = subprocess.run(
            [promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
