"""The Helm chart (helm/), checked with the real `helm` binary that scripts/helm.sh builds.

What a user of the chart would notice: off by default (nothing rendered), and when on a single
StatefulSet whose RocksDB state sits on a persistent volume at STATE_DIR, probes on the service's
health paths, the platform's config maps, the component's settings, the Service the platform's
ingress routes /contacts to (api-contacts, port 80 -> the container's 8080), a headless Service on
8080, Prometheus annotations, and values overrides that reach the rendered objects.

If helm cannot be built, every test here fails with the reason: no skipping.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm"
SCRIPT = REPO / "scripts" / "helm.sh"
ON = ("--set", "integration.contacts.enabled=true")

EXPECTED_ENV = {
    "CONTACTS_TOPIC": "application.communication.contacts",
    "CONTACT_EVENTS_TOPIC": "application.communication.contact-events",
    "MESSAGES_TOPIC": "application.communication.messages",
    "METADATA_TOPIC": "application.communication.metadata",
    "CONTACTS_PARTITIONS": "1",
    "APPLICATION_ID": "contacts-streams",
    "STATE_DIR": "/var/lib/contacts-streams",
    "PORT": "8080",
    "AUTO_CREATE_ENABLED": "true",
    "DEFAULT_PHONE_REGION": "US",
    "LOG_FORMAT": "json",
    "HTTP_SERVER": "granian",
}


@dataclass
class Helm:
    """The helm binary, or why there is none (reported as a failure by the test that uses it)."""

    path: str | None
    error: str | None
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        if self.path is None:
            pytest.fail(f"no helm binary: {self.error}", pytrace=False)
        proc = subprocess.run(
            [self.path, *args], capture_output=True, text=True, env=self.env, timeout=120
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}",
                pytrace=False,
            )
        return proc

    def template(self, *args: str) -> list[dict]:
        out = self.run("template", "contacts", str(CHART), "--namespace", "airy", *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def _build_helm() -> tuple[str | None, str | None]:
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30 * 60
        )
    except subprocess.TimeoutExpired as err:
        return None, f"{SCRIPT} did not finish in {err.timeout:.0f}s"
    if proc.returncode != 0:
        return None, f"{SCRIPT} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return None, f"{SCRIPT} printed no path (stderr: {proc.stderr[-2000:]})"
    path = lines[-1]
    if not os.access(path, os.X_OK):
        return None, f"{SCRIPT} printed {path!r}, which is not an executable"
    return path, None


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    path, error = _build_helm()
    home = tmp_path_factory.mktemp("helm-home")
    # Keep helm away from the user's helm config, repositories and cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
    env.update(
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "kubeconfig"),
    )
    return Helm(path, error, env)


@pytest.fixture(scope="module")
def rendered(helm) -> list[dict]:
    """The chart rendered with the component on and every other value at its default."""
    try:
        return helm.template(*ON)
    except pytest.fail.Exception as err:  # surfaced by each test that uses it
        return [{"__error__": str(err)}]


def _ok(docs: list[dict]) -> list[dict]:
    if docs and "__error__" in docs[0]:
        pytest.fail(docs[0]["__error__"], pytrace=False)
    return docs


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in _ok(docs) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict]) -> dict:
    containers = only(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def port_number(c: dict, port) -> int:
    """A probe/target port as a number (a named port is looked up in the container's ports)."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in named, f"port {port!r} is not one of the container's ports {named}"
    return named[port]


# --- the binary ----------------------------------------------------------------------------------


def test_helm_is_built_once_and_reused(helm):
    helm.run("version")
    again = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == helm.path
    assert "building" not in again.stderr, "the second run rebuilt helm instead of reusing it"


# --- lint and the enable switch ------------------------------------------------------------------


def test_lint_passes_with_the_component_on(helm):
    out = helm.run("lint", "--strict", str(CHART), *ON).stdout
    assert "0 chart(s) failed" in out


def test_lint_passes_with_the_defaults(helm):
    assert "0 chart(s) failed" in helm.run("lint", str(CHART)).stdout


@pytest.mark.parametrize("args", [(), ("--set", "integration.contacts.enabled=false")])
def test_off_renders_nothing(helm, args):
    assert helm.template(*args) == []
    raw = helm.run("template", "contacts", str(CHART), *args).stdout
    assert raw.strip() == ""


def test_a_non_boolean_switch_is_refused_by_the_schema(helm):
    proc = helm.run(
        "template", "contacts", str(CHART), "--set", "integration.contacts.enabled=yes", check=False
    )
    assert proc.returncode != 0
    assert "integration/contacts/enabled" in proc.stderr


# --- what the chart deploys ----------------------------------------------------------------------


def test_on_renders_one_statefulset_two_services_and_a_disruption_budget(rendered):
    kinds = Counter(d["kind"] for d in _ok(rendered))
    assert kinds == {"StatefulSet": 1, "Service": 2, "PodDisruptionBudget": 1}
    for doc in rendered:
        labels = doc["metadata"]["labels"]
        assert labels["core.airy.co/managed"] == "true"
        assert labels["core.airy.co/component"] == "api-contacts"


def test_statefulset_runs_two_spread_replicas_of_the_entry_point(rendered):
    sts = only(rendered, "StatefulSet", "contacts")
    assert sts["spec"]["replicas"] == 2
    spread = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert only(rendered, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    c = container(rendered)
    assert c["command"] == ["python", "-m", "api"]
    assert c["image"] == "ghcr.io/airyhq/api/contacts-streams:0.1.0"
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_state_dir_is_a_persistent_volume(rendered):
    sts = only(rendered, "StatefulSet")
    claims = sts["spec"]["volumeClaimTemplates"]
    assert len(claims) == 1
    claim = claims[0]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    c = container(rendered)
    state_dir = env_of(c)["STATE_DIR"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts.get(claim["metadata"]["name"]) == state_dir == "/var/lib/contacts-streams"
    # A claim template wins over nothing: no pod volume of the same name shadows it.
    pod_volumes = sts["spec"]["template"]["spec"].get("volumes") or []
    assert claim["metadata"]["name"] not in {v["name"] for v in pod_volumes}


@pytest.mark.parametrize(
    "probe, path",
    [
        ("readinessProbe", "/actuator/health/readiness"),
        ("livenessProbe", "/actuator/health/liveness"),
        ("startupProbe", "/actuator/health/liveness"),
    ],
)
def test_probes_hit_the_health_paths_on_8080(rendered, probe, path):
    c = container(rendered)
    get = c[probe]["httpGet"]
    assert get["path"] == path
    assert port_number(c, get["port"]) == 8080


def test_startup_probe_allows_a_long_start(rendered):
    startup = container(rendered)["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_env_from_the_platform_config_maps(rendered):
    refs = [e["configMapRef"] for e in container(rendered)["envFrom"]]
    assert [r["name"] for r in refs] == ["kafka-config", "security"]
    assert all(r.get("optional") is False for r in refs)


def test_the_components_own_settings(rendered):
    env = env_of(container(rendered))
    for name, value in EXPECTED_ENV.items():
        assert env.get(name) == value, f"{name}={env.get(name)!r}, expected {value!r}"
    assert all(isinstance(v, str) for v in env.values()), "every env value must be a string"


def test_the_ingress_service_is_api_contacts_port_80_to_the_pods_8080(rendered):
    # The platform's ingress (infrastructure/helm-chart/templates/components/ingress.yaml in
    # airyhq/airy) routes /contacts to service api-contacts, port number 80.
    pod_labels = only(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    c = container(rendered)
    svc = only(rendered, "Service", "api-contacts")
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 80
    assert port_number(c, port["targetPort"]) == 8080
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["metadata"]["labels"]["core.airy.co/component"] == "api-contacts"


def test_the_headless_service_exposes_8080_to_the_pod(rendered):
    pod_labels = only(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    c = container(rendered)
    headless = only(rendered, "Service", "contacts-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert only(rendered, "StatefulSet")["spec"]["serviceName"] == "contacts-headless"
    (port,) = headless["spec"]["ports"]
    assert port["port"] == 8080
    assert port_number(c, port["targetPort"]) == 8080
    assert headless["spec"]["selector"].items() <= pod_labels.items()


def test_prometheus_scrapes_the_actuator_endpoint(rendered):
    annotations = only(rendered, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/actuator/prometheus"
    assert annotations["prometheus.io/port"] == "8080"


def test_resources_are_set(rendered):
    resources = container(rendered)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()


# --- values overrides ----------------------------------------------------------------------------


def test_overrides_reach_the_objects(helm):
    docs = helm.template(
        *ON,
        "--set", "image.tag=x",
        "--set", "global.containerRegistry=registry.example.com/airy",
        "--set", "resources.limits.memory=3Gi",
        "--set", "resources.requests.cpu=750m",
        "--set", "config.autoCreateEnabled=false",
        "--set", "config.contactsTopic=tenant.contacts",
        "--set", "config.contactEventsTopic=tenant.contact-events",
        "--set", "config.httpServer=gunicorn",
        "--set", "persistence.size=50Gi",
        "--set", "persistence.storageClass=fast-ssd",
        "--set", "extraEnv[0].name=HTTP_THREADS",
        "--set-string", "extraEnv[0].value=64",
    )
    c = container(docs)
    assert c["image"] == "registry.example.com/airy/api/contacts-streams:x"
    assert c["resources"]["limits"]["memory"] == "3Gi"
    assert c["resources"]["requests"]["cpu"] == "750m"
    env = env_of(c)
    assert env["AUTO_CREATE_ENABLED"] == "false"
    assert env["CONTACTS_TOPIC"] == "tenant.contacts"
    assert env["CONTACT_EVENTS_TOPIC"] == "tenant.contact-events"
    assert env["HTTP_THREADS"] == "64"
    assert env["HTTP_SERVER"] == "gunicorn"
    claim = only(docs, "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "50Gi"
    assert claim["storageClassName"] == "fast-ssd"


def test_image_tag_falls_back_to_the_platform_tag(helm):
    c = container(helm.template(*ON, "--set", "global.appImageTag=release-7"))
    assert c["image"].endswith("/api/contacts-streams:release-7")


def test_a_new_port_moves_everything_together(helm):
    docs = helm.template(*ON, "--set", "port=9090")
    c = container(docs)
    assert env_of(c)["PORT"] == "9090"
    assert port_number(c, c["readinessProbe"]["httpGet"]["port"]) == 9090
    assert only(docs, "Service", "contacts-headless")["spec"]["ports"][0]["port"] == 9090
    ingress = only(docs, "Service", "api-contacts")["spec"]["ports"][0]
    assert ingress["port"] == 80 and port_number(c, ingress["targetPort"]) == 9090
    annotations = only(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9090"


def test_without_persistence_the_state_dir_is_an_empty_dir(helm):
    docs = helm.template(*ON, "--set", "persistence.enabled=false")
    sts = only(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    mount = container(docs)["volumeMounts"][0]
    assert mount["mountPath"] == "/var/lib/contacts-streams"
    assert "emptyDir" in volumes[mount["name"]]


def test_certificate_auth_mounts_the_platforms_certificates(helm, rendered):
    assert all(m["name"] != "kafka-config-certs" for m in container(rendered)["volumeMounts"])
    for extra in ([], ["--set", "persistence.enabled=false"]):
        docs = helm.template(*ON, "--set", "global.kafkaCertAuth=true", *extra)
        mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
        assert mounts["kafka-config-certs"]["mountPath"] == "/opt/kafka/certs" and mounts["kafka-config-certs"]["readOnly"] is True
        assert "state" in mounts
        volumes = {v["name"]: v for v in only(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-config-certs"]["configMap"]["name"] == "kafka-config-certs"
        assert ("state" in volumes) == bool(extra)


def test_an_unknown_http_server_is_refused_by_the_schema(helm):
    proc = helm.run("template", "contacts", str(CHART), *ON, "--set", "config.httpServer=uwsgi", check=False)
    assert proc.returncode != 0
    assert "httpServer" in proc.stderr
