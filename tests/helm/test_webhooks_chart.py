"""The chart's webhooks Deployment (webhooks.enabled), rendered with the real helm: off by default,
and when on a Deployment of `python -m contacts_streams.webhooks` whose subscriptions file and
secrets, as the pod would see them, are a configuration the process accepts."""

from __future__ import annotations

from collections import Counter

import pytest
from test_chart import CHART, ON, env_of, helm, only, port_number  # noqa: F401 - helm is a fixture

from contacts_streams.webhooks import RetryPolicy, WebhooksConfig

HOOKS = (
    *ON,
    "--set", "webhooks.enabled=true",
    "--set", "webhooks.subscriptions[0].name=crm",
    "--set", "webhooks.subscriptions[0].url=https://crm.example.com/hooks",
    "--set", "webhooks.subscriptions[0].secret=crm-s3cret",
    "--set", "webhooks.subscriptions[1].name=deletes",
    "--set", "webhooks.subscriptions[1].url=http://audit:8000/in",
    "--set", "webhooks.subscriptions[1].secret=audit-s3cret",
    "--set", "webhooks.subscriptions[1].operations={deleted,erased}",
    "--set", "webhooks.subscriptions[1].timeoutMs=2500",
)


def webhooks_container(docs: list[dict]) -> dict:
    (c,) = only(docs, "Deployment", "contacts-webhooks")["spec"]["template"]["spec"]["containers"]
    return c


def as_the_pod_sees_it(docs: list[dict], tmp_path, secrets: dict[str, dict[str, str]] | None = None) -> WebhooksConfig:
    """The Deployment's environment with its secretKeyRefs resolved (from the rendered Secret, or
    `secrets` for an existing one) and the ConfigMap's file at WEBHOOKS_CONFIG, read as the
    process reads it."""
    c = webhooks_container(docs)
    stores = dict(secrets or {})
    for doc in docs:
        if doc["kind"] == "Secret":
            stores[doc["metadata"]["name"]] = doc["stringData"]
    env = {}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = stores[ref["name"]][ref["key"]]
    deployment = only(docs, "Deployment", "contacts-webhooks")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "subscriptions"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "subscriptions"]
    data = only(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    folder = tmp_path / mount["mountPath"].strip("/")
    folder.mkdir(parents=True)
    for name, text in data.items():
        (folder / name).write_text(text)
    assert env["WEBHOOKS_CONFIG"].startswith(mount["mountPath"] + "/")
    env["WEBHOOKS_CONFIG"] = str(folder / env["WEBHOOKS_CONFIG"][len(mount["mountPath"]) + 1:])
    return WebhooksConfig.from_env(env)


def test_off_by_default_and_with_the_component_off(helm):
    assert not [d for d in helm.template(*ON) if d["kind"] == "Deployment"]
    assert helm.template("--set", "webhooks.enabled=true", "--set", "webhooks.subscriptions[0].name=a",
                         "--set", "webhooks.subscriptions[0].url=http://a/", "--set", "webhooks.subscriptions[0].secret=s") == []


def test_on_renders_a_deployment_its_subscriptions_and_their_secrets(helm, tmp_path):
    docs = helm.template(*HOOKS)
    kinds = Counter(d["kind"] for d in docs)
    assert kinds == {"StatefulSet": 1, "Service": 2, "PodDisruptionBudget": 1, "Deployment": 1, "ConfigMap": 1, "Secret": 1}
    deployment = only(docs, "Deployment", "contacts-webhooks")
    c = webhooks_container(docs)
    assert c["command"] == ["python", "-m", "contacts_streams.webhooks"]
    assert c["image"] == "ghcr.io/airyhq/api/contacts-streams:0.1.0"
    assert [r["configMapRef"]["name"] for r in c["envFrom"]] == ["kafka-config"]
    for probe, path in (("livenessProbe", "/actuator/health/liveness"), ("readinessProbe", "/actuator/health/readiness")):
        assert c[probe]["httpGet"]["path"] == path
        assert port_number(c, c[probe]["httpGet"]["port"]) == 8081
    env = env_of(c)
    assert env["WEBHOOKS_METRICS_PORT"] == "8081" and env["APPLICATION_ID"] == "contacts-streams"
    assert env["CONTACT_EVENTS_TOPIC"] == env_of(only(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0])["CONTACT_EVENTS_TOPIC"]
    assert all(isinstance(e.get("value", ""), str) for e in c["env"])
    # Secrets never sit in the ConfigMap.
    assert "s3cret" not in str(only(docs, "ConfigMap"))
    # Its pods are not the API's: neither the StatefulSet nor the api-contacts Service selects them.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (only(docs, "StatefulSet")["spec"]["selector"]["matchLabels"], only(docs, "Service", "api-contacts")["spec"]["selector"]):
        assert not all(pod_labels.get(k) == v for k, v in selector.items())
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8081"

    crm, deletes = as_the_pod_sees_it(docs, tmp_path).subscriptions
    assert (crm.name, crm.url, crm.secret, crm.operations) == ("crm", "https://crm.example.com/hooks", "crm-s3cret", None)
    assert (deletes.secret, deletes.operations, deletes.timeout_ms) == ("audit-s3cret", frozenset({"deleted", "erased"}), 2500)
    assert crm.retry == RetryPolicy() and crm.retry.max_duration_ms >= 3_600_000


def test_secrets_from_an_existing_secret_and_retry_settings(helm, tmp_path):
    docs = helm.template(
        *ON, "--set", "webhooks.enabled=true", "--set", "webhooks.existingSecret=crm-hooks",
        "--set", "webhooks.subscriptions[0].name=crm", "--set", "webhooks.subscriptions[0].url=https://crm/h",
        "--set", "webhooks.subscriptions[0].secretKey=signing-key",
        "--set", "webhooks.retry.maxAttempts=12", "--set", "webhooks.retry.maxDurationMs=7200000",
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    (sub,) = as_the_pod_sees_it(docs, tmp_path, {"crm-hooks": {"signing-key": "from-vault"}}).subscriptions
    assert sub.secret == "from-vault"
    assert sub.retry == RetryPolicy(max_attempts=12, max_duration_ms=7_200_000)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--set", "webhooks.enabled=true"), "at least one"),
        (("--set", "webhooks.enabled=true", "--set", "webhooks.subscriptions[0].name=a", "--set", "webhooks.subscriptions[0].url=http://a/"), "needs a secret"),
        (("--set", "webhooks.enabled=true", "--set", "webhooks.subscriptions[0].name=a", "--set", "webhooks.subscriptions[0].url=http://a/",
          "--set", "webhooks.subscriptions[0].secret=s", "--set", "webhooks.subscriptions[0].operations={creatd}"), "operations"),
    ],
)
def test_a_subscription_the_process_would_refuse_fails_the_render(helm, args, message):
    proc = helm.run("template", "contacts", str(CHART), *ON, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr
