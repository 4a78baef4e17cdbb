"""docker-compose.yml and the collector configs: valid, wired together, nothing left dangling.

Nothing here runs a container or a collector (no image can be pulled on the machines
the tests run on). ``docker-compose config`` validates the compose file against the
Compose schema without a Docker engine; the collector configs are checked
structurally: every component a pipeline names is defined, every defined component
is used, connectors join two pipelines, and OTLP comes in on 4317 and 4318.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.helpers import IN_CI, ROOT

pytestmark = pytest.mark.integration

COMPOSE_FILE = ROOT / "docker-compose.yml"
COLLECTOR_CONFIGS = sorted((ROOT / "collector-config").glob("*.yaml"))
KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")
SIGNALS = ("traces", "metrics", "logs")
# Component types of the contrib distribution these configs may use: a typo in a
# type name (`memorylimiter`, `otlphttp/...` after its rename) fails here, not at
# the collector's start.
KNOWN_TYPES = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch", "resourcedetection", "filter", "resource"},
    "exporters": {"otlp_grpc", "otlp_http", "debug", "prometheus", "prometheusremotewrite"},
    "connectors": {"spanmetrics"},
    "extensions": {"health_check"},
}
ENV_REF = re.compile(r"\$\{([^}]*)\}")
BLOCK_SPAN = "eventloop.block"


def compose_command() -> list[str]:
    """``docker-compose`` (Debian's, installed by scripts/setup.sh) or ``docker compose``."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    reason = "neither docker-compose nor the docker compose plugin is installed (make setup)"
    if IN_CI:
        pytest.fail(f"CI must validate docker-compose.yml: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, `$$` kept)."""
    result = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def load(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def defined(config: dict[str, Any], kind: str) -> set[str]:
    return set(config.get(kind) or {})


def pipelines(config: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    found: dict[str, dict[str, list[str]]] = config["service"]["pipelines"]
    return found


def test_there_is_a_config_per_backend() -> None:
    assert {p.name for p in COLLECTOR_CONFIGS} >= {"jaeger.yaml", "tempo.yaml", "honeycomb.yaml"}


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS, ids=lambda p: p.name)
class TestCollectorConfig:
    def test_every_component_a_pipeline_names_is_defined(self, path: Path) -> None:
        # GIVEN a collector config
        config = load(path)
        connectors = defined(config, "connectors")
        # WHEN each pipeline's components are looked up
        for name, pipeline in pipelines(config).items():
            # THEN each is defined under its kind (a connector may stand as either end)
            assert pipeline.get("receivers"), f"{name}: no receivers"
            assert pipeline.get("exporters"), f"{name}: no exporters"
            for kind in ("receivers", "processors", "exporters"):
                allowed = defined(config, kind)
                if kind != "processors":
                    allowed |= connectors
                missing = set(pipeline.get(kind, [])) - allowed
                assert not missing, f"{name}: {kind} {sorted(missing)} are not defined"

    def test_every_defined_component_is_used(self, path: Path) -> None:
        config = load(path)
        used: dict[str, set[str]] = {kind: set() for kind in KINDS}
        for pipeline in pipelines(config).values():
            for kind in ("receivers", "processors", "exporters"):
                used[kind] |= set(pipeline.get(kind, []))
        used["extensions"] = set(config["service"].get("extensions", []))
        connectors = defined(config, "connectors")
        for kind in ("receivers", "processors", "exporters", "extensions"):
            unused = defined(config, kind) - used[kind]
            assert not unused, f"{kind} {sorted(unused)} are defined but never used"
        for connector in connectors:
            # A connector is the exporter of one pipeline and the receiver of another.
            assert connector in used["exporters"], f"connector {connector} receives nothing"
            assert connector in used["receivers"], f"connector {connector} feeds nothing"

    def test_component_types_and_pipeline_names_are_real(self, path: Path) -> None:
        config = load(path)
        for kind in KINDS:
            unknown = {component_type(c) for c in defined(config, kind)} - KNOWN_TYPES[kind]
            assert not unknown, f"unknown {kind}: {sorted(unknown)}"
        for name in pipelines(config):
            assert component_type(name) in SIGNALS, f"pipeline {name}: not traces/metrics/logs"
        assert {component_type(n) for n in pipelines(config)} == set(SIGNALS)

    def test_otlp_comes_in_on_4317_and_4318_on_every_interface(self, path: Path) -> None:
        protocols = load(path)["receivers"]["otlp"]["protocols"]
        assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
        assert protocols["http"]["endpoint"] == "0.0.0.0:4318"

    def test_memory_limiter_first_and_batch_before_every_network_exporter(self, path: Path) -> None:
        config = load(path)
        for name, pipeline in pipelines(config).items():
            processors = pipeline.get("processors", [])
            assert processors[:1] == ["memory_limiter"], f"{name}: memory_limiter is not first"
            exporters = {component_type(e) for e in pipeline["exporters"]}
            if exporters - {"spanmetrics", "debug", "prometheus"}:
                assert "batch" in processors, f"{name}: exports over the network unbatched"

    def test_env_vars_use_env_syntax_and_are_documented_in_the_header(self, path: Path) -> None:
        text = path.read_text()
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        assert "otelcol-contrib --config" in header
        assert "docker run" in header
        for ref in ENV_REF.findall(text):
            assert ref.startswith("env:"), f"${{{ref}}}: use ${{env:VAR}}"
            variable = ref.removeprefix("env:").split(":-", 1)[0]
            assert variable in header, f"{variable} is not explained in the header comment"


def test_spanmetrics_counts_block_spans_by_cause_and_function() -> None:
    # GIVEN the configs that derive metrics from spans
    with_spanmetrics = [
        load(p) for p in COLLECTOR_CONFIGS if "spanmetrics" in load(p).get("connectors", {})
    ]
    assert with_spanmetrics, "no config has the spanmetrics connector"
    for config in with_spanmetrics:
        # THEN the dimensions are the block's cause and function
        dimensions = {d["name"] for d in config["connectors"]["spanmetrics"]["dimensions"]}
        assert dimensions == {"blocksnoop.cause", "code.function.name"}
        # AND the pipeline feeding it drops every span but the sidecar's
        (feeder,) = [p for p in pipelines(config).values() if "spanmetrics" in p["exporters"]]
        filters = [config["processors"][p] for p in feeder["processors"] if p.startswith("filter")]
        assert filters == [
            {"error_mode": "ignore", "traces": {"span": [f'name != "{BLOCK_SPAN}"']}}
        ]


def test_honeycomb_gets_the_key_and_a_metrics_dataset() -> None:
    exporters = load(ROOT / "collector-config" / "honeycomb.yaml")["exporters"]
    headers = [e["headers"] for e in exporters.values()]
    assert all(h["x-honeycomb-team"] == "${env:HONEYCOMB_API_KEY}" for h in headers)
    assert any("x-honeycomb-dataset" in h for h in headers)
    endpoints = {e["endpoint"] for e in exporters.values()}
    assert endpoints == {"${env:HONEYCOMB_API_ENDPOINT:-api.honeycomb.io:443}"}


class TestComposeFile:
    def test_the_sidecar_has_two_capabilities_and_nothing_else_writable(
        self, compose: dict[str, Any]
    ) -> None:
        sidecar = compose["services"]["sidecar"]
        assert not sidecar.get("privileged", False)
        assert sidecar["cap_drop"] == ["ALL"]
        assert set(sidecar["cap_add"]) == {"SYS_ADMIN", "SYS_PTRACE"}
        assert sidecar["security_opt"] == ["no-new-privileges:true"]
        assert sidecar["read_only"] is True
        assert sidecar["tmpfs"] == ["/tmp"]  # noqa: S108 - the container's tmpfs, no file
        mounts = {v.split(":")[1]: v for v in sidecar["volumes"]}
        assert set(mounts) == {"/sys/kernel/tracing", "/lib/modules", "/usr/src"}
        assert all(v.endswith(":ro") for v in mounts.values())

    def test_the_sidecar_joins_the_apps_own_pid_namespace(self, compose: dict[str, Any]) -> None:
        assert "pid" not in compose["services"]["app"]
        assert compose["services"]["sidecar"]["pid"] == "service:app"

    def test_the_app_exports_without_epoll_in_its_own_threads(
        self, compose: dict[str, Any]
    ) -> None:
        env = compose["services"]["app"]["environment"]
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"

    def test_the_sidecar_is_configured_by_otel_variables_to_the_collector(
        self, compose: dict[str, Any]
    ) -> None:
        services = compose["services"]
        env = services["sidecar"]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        assert "otel-blocksnoop -t 50" in " ".join(services["sidecar"]["command"])

    def test_the_sidecar_finds_the_app_and_not_itself(self, compose: dict[str, Any]) -> None:
        # GIVEN the pgrep pattern in the sidecar's command (`$$` is compose's `$`)
        script = " ".join(compose["services"]["sidecar"]["command"]).replace("$$", "$")
        (pattern,) = re.findall(r"pgrep -o -f '([^']+)'", script)
        # THEN it matches the app image's command line, as pgrep -f sees it
        app_dockerfile = ROOT / compose["services"]["app"]["build"]["dockerfile"]
        (cmd,) = re.findall(r"^CMD \[(.*)\]$", app_dockerfile.read_text(), re.MULTILINE)
        assert re.search(pattern, " ".join(part.strip(' "') for part in cmd.split(",")))
        # AND not the sidecar's own shell, whose command line holds the pattern
        assert not re.search(pattern, script)

    def test_the_collector_runs_the_jaeger_config_and_reaches_jaeger(
        self, compose: dict[str, Any]
    ) -> None:
        services = compose["services"]
        collector = services["otel-collector"]
        assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
        (mount,) = collector["volumes"]
        source, target, _mode = mount.split(":")
        assert Path(source) == ROOT / "collector-config" / "jaeger.yaml"
        assert target in " ".join(collector["command"])
        jaeger_host = collector["environment"]["JAEGER_OTLP_ENDPOINT"].split(":")[0]
        assert services[jaeger_host]["image"].startswith("jaegertracing/all-in-one:")
        assert services[jaeger_host]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
        published = {p["target"] for p in services[jaeger_host]["ports"]}
        assert 16686 in published

    def test_the_app_has_an_image_of_its_own_built_here(self, compose: dict[str, Any]) -> None:
        app, sidecar = compose["services"]["app"], compose["services"]["sidecar"]
        assert app["image"] != sidecar["image"]
        assert Path(app["build"]["context"]) == ROOT
        assert Path(sidecar["build"]["context"]) == ROOT
        assert (ROOT / app["build"]["dockerfile"]).is_file()
        assert (ROOT / "Dockerfile").is_file()
        assert "examples/blocking_service.py" in (ROOT / app["build"]["dockerfile"]).read_text()

    def test_grafana_shows_the_dashboard_from_a_prometheus_that_scrapes_the_collector(
        self, compose: dict[str, Any]
    ) -> None:
        # GIVEN the grafana and prometheus services and what they mount
        services = compose["services"]
        grafana, prometheus = services["grafana"], services["prometheus"]
        mounts = {v.split(":")[1]: Path(v.split(":")[0]) for v in grafana["volumes"]}
        provisioning = mounts["/etc/grafana/provisioning"]
        # THEN the dashboard is in the folder its provider reads
        provider = load(provisioning / "dashboards" / "otel-blocksnoop.yaml")
        (folder,) = [p["options"]["path"] for p in provider["providers"]]
        assert (
            mounts[f"{folder}/otel-blocksnoop.json"] == ROOT / "deploy/grafana/otel-blocksnoop.json"
        )
        home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        assert home == f"{folder}/otel-blocksnoop.json"
        # AND its default data source is the prometheus service
        (source,) = load(provisioning / "datasources" / "prometheus.yaml")["datasources"]
        assert source["type"] == "prometheus"
        assert source["isDefault"] is True
        host, port = source["url"].removeprefix("http://").split(":")
        assert host == "prometheus"
        assert int(port) == 9090
        assert prometheus["image"].startswith("prom/prometheus:")
        # AND that prometheus scrapes the port the collector's prometheus exporter listens on
        (config_mount,) = prometheus["volumes"]
        source_path, target, _mode = config_mount.split(":")
        assert f"--config.file={target}" in prometheus["command"]
        (job,) = load(Path(source_path))["scrape_configs"]
        (targets,) = [c["targets"] for c in job["static_configs"]]
        collector = load(ROOT / "collector-config" / "jaeger.yaml")
        exporter_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
        assert targets == [f"otel-collector:{exporter_port}"]
