"""Webhooks without a broker: the signature (ours and the README's receiver snippet agree), the
backoff schedule, and subscriptions from a file or the environment."""

from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webhookkit import readme_verifier

from contacts_streams.config import ConfigError
from contacts_streams.webhooks import RetryPolicy, Subscription, Tracker, WebhooksConfig, body_of, signature, signer, verify

# --- signature -------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_time_dot_body():
    # Fixed vector, computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
    assert signature("s3cret", b'{"a":1}', 1700000000) == (
        "t=1700000000,v1=" + __import__("hmac").new(b"s3cret", b'1700000000.{"a":1}', "sha256").hexdigest()
    )


@settings(max_examples=200, deadline=None)
@given(secret=st.text(min_size=1, max_size=40), body=st.binary(max_size=200), timestamps=st.lists(st.integers(0, 2**40), min_size=1, max_size=4))
def test_the_senders_prepared_signer_signs_as_signature_does_every_time(secret, body, timestamps):
    sign = signer(secret)  # the key set up once, reused for every event
    assert [sign(body, t) for t in timestamps] == [signature(secret, body, t) for t in timestamps]


@settings(max_examples=200, deadline=None)
@given(secret=st.text(min_size=1, max_size=40), event=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=5))
def test_the_readme_snippet_verifies_what_we_sign_and_refuses_tampering(secret, event):
    readme = readme_verifier()
    body = body_of(event)
    header = signature(secret, body, int(time.time()))
    assert readme(secret, body, header)
    assert verify(secret, body, header)
    assert not readme(secret, body + b" ", header)
    assert not readme(secret + "x", body, header)
    assert not verify(secret, body + b" ", header)


def test_an_old_signature_is_refused_as_a_replay():
    readme = readme_verifier()
    body = b'{"event_id":"e"}'
    old = signature("k", body, int(time.time()) - 3600)
    assert not readme("k", body, old)
    assert not verify("k", body, old)
    assert not readme("k", body, "garbage")
    assert not verify("k", body, "t=,v1=")


def test_the_body_is_the_event_as_compact_utf8_json():
    event = {"event_id": "e", "contact_id": "c", "changes": [{"path": "display_name", "before": None, "after": '"Zoë"'}]}
    assert json.loads(body_of(event)) == event
    assert "Zoë".encode() in body_of(event)


# --- backoff ---------------------------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    base_ms=st.integers(1, 10_000),
    max_delay_ms=st.integers(1, 600_000),
    max_attempts=st.integers(0, 50),
    max_duration_ms=st.integers(0, 7_200_000),
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, failures=st.integers(1, 200), seed=st.integers(0, 2**32))
def test_full_jitter_delays_stay_under_the_exponential_cap(policy, failures, seed):
    delay = policy.delay(failures, random.Random(seed))
    assert 0 <= delay <= min(policy.max_delay_ms, policy.base_ms * 2 ** (failures - 1)) / 1000


def test_delays_grow_exponentially_on_average_then_stop_at_the_maximum():
    policy = RetryPolicy(base_ms=100, max_delay_ms=10_000)
    rng = random.Random(7)
    means = [sum(policy.delay(n, rng) for _ in range(4000)) / 4000 for n in (1, 2, 3, 4, 10, 20)]
    for mean, cap in zip(means, (0.1, 0.2, 0.4, 0.8, 10, 10)):
        assert cap * 0.45 < mean < cap * 0.55  # uniform(0, cap): mean cap/2


def run_schedule(policy: RetryPolicy, seed: int) -> tuple[int, float]:
    """Tries and time spent until the policy gives up on a receiver that always fails (instant)."""
    rng, elapsed, attempts = random.Random(seed), 0.0, 0
    while True:
        attempts += 1
        wait = policy.next_delay(attempts, elapsed, rng)
        if wait is None:
            return attempts, elapsed
        elapsed += wait
        assert attempts < 100_000


# Schedules short enough to walk through try by try (a 1 ms delay over hours would be millions).
bounded = st.builds(
    RetryPolicy,
    base_ms=st.integers(100, 10_000),
    max_delay_ms=st.integers(1000, 600_000),
    max_attempts=st.integers(0, 50),
    max_duration_ms=st.integers(0, 600_000),
).filter(lambda p: p.max_attempts or p.max_duration_ms)


@settings(max_examples=100, deadline=None)
@given(policy=bounded, seed=st.integers(0, 2**32))
def test_gives_up_at_the_first_limit_reached(policy, seed):
    attempts, elapsed = run_schedule(policy, seed)
    if policy.max_attempts:
        assert attempts <= policy.max_attempts
    if policy.max_duration_ms:
        assert elapsed <= policy.max_duration_ms / 1000 + 1e-6
    # The limit that ended it was reached, not another reason.
    assert (policy.max_attempts and attempts == policy.max_attempts) or elapsed >= policy.max_duration_ms / 1000 - 0.001 - 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_the_default_retries_for_an_hour_before_the_dead_letter(seed):
    attempts, elapsed = run_schedule(RetryPolicy(), seed)
    assert elapsed >= 3600
    assert 15 <= attempts <= 60  # about one try every 2.5 min once the delay is capped at 5 min


def test_no_limits_never_gives_up():
    assert RetryPolicy(max_attempts=0, max_duration_ms=0).next_delay(10_000, 10**9) is not None


# --- the committed prefix --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=60, unique=True).map(sorted), st.randoms())
def test_the_commit_point_is_the_oldest_offset_not_done(offsets, rng):
    tracker = Tracker()
    for offset in offsets:
        tracker.add(offset)
    order = list(offsets)
    rng.shuffle(order)
    done = set()
    for offset in order:
        tracker.finish(offset)
        done.add(offset)
        undone = [o for o in offsets if o not in done]
        assert tracker.commit_point(position=offsets[-1] + 3) == (undone[0] if undone else offsets[-1] + 3)


# --- configuration ---------------------------------------------------------------------------


def test_one_subscription_from_the_environment():
    cfg = WebhooksConfig.from_env({"WEBHOOK_URL": "http://crm:8000/hook", "WEBHOOK_SECRET": "Zq9-secret", "WEBHOOK_OPERATIONS": "created, deleted"})
    (sub,) = cfg.subscriptions
    assert (sub.name, sub.url, sub.operations) == ("default", "http://crm:8000/hook", frozenset({"created", "deleted"}))
    assert sub.wants("created") and not sub.wants("updated")
    assert sub.retry == RetryPolicy() and sub.retry.max_duration_ms >= 3_600_000
    assert "Zq9-secret" not in repr(sub) and sub.secret == "Zq9-secret"


def test_subscriptions_from_a_yaml_file_with_secrets_from_the_environment(tmp_path):
    path = tmp_path / "hooks.yaml"
    path.write_text(
        "- name: crm\n  url: https://crm.example.com/h\n  secret_env: CRM_SECRET\n  operations: all\n"
        "  retry: {max_attempts: 5}\n"
        "- name: deletes\n  url: http://x/y\n  secret: inline\n  operations: [deleted, erased]\n  timeout_ms: 500\n  start_from: latest\n"
    )
    cfg = WebhooksConfig.from_env({"WEBHOOKS_CONFIG": str(path), "CRM_SECRET": "from-env", "WEBHOOKS_RETRY_BASE_MS": "20"})
    crm, deletes = cfg.subscriptions
    assert crm.secret == "from-env" and crm.operations is None and crm.retry == RetryPolicy(base_ms=20, max_attempts=5)
    assert deletes == Subscription("deletes", "http://x/y", "inline", frozenset({"deleted", "erased"}), 500, RetryPolicy(base_ms=20), "latest")


def test_subscriptions_from_a_json_file(tmp_path):
    path = tmp_path / "hooks.json"
    path.write_text(json.dumps({"subscriptions": [{"name": "a", "url": "http://a/", "secret": "s"}]}))
    assert WebhooksConfig.from_env({"WEBHOOKS_CONFIG": str(path)}).subscriptions[0].name == "a"


@pytest.mark.parametrize(
    "content, env, names",
    [
        ("- {name: a, url: 'ftp://a', secret: s}", {}, "url"),
        ("- {name: 'a b', url: 'http://a', secret: s}", {}, "name"),
        ("- {name: a, url: 'http://a'}", {}, "secret"),
        ("- {name: a, url: 'http://a', secret_env: NOPE}", {}, "NOPE"),
        ("- {name: a, url: 'http://a', secret: s, operations: [creatd]}", {}, "creatd"),
        ("- {name: a, url: 'http://a', secret: s, timeout_ms: -1}", {}, "timeout_ms"),
        ("- {name: a, url: 'http://a', secret: s, retry: {max_attempts: x}}", {}, "max_attempts"),
        ("- {name: a, url: 'http://a', secret: s, colour: red}", {}, "colour"),
        ("- {name: a, url: 'http://a', secret: s}\n- {name: a, url: 'http://b', secret: s}", {}, "unique"),
        ("[]", {}, "non-empty"),
        ("{{{", {}, "YAML"),
        ("- {name: a, url: 'http://a', secret: s}", {"WEBHOOKS_RETRY_MAX_DELAY_MS": "soon"}, "WEBHOOKS_RETRY_MAX_DELAY_MS"),
    ],
)
def test_a_bad_file_is_refused_naming_what(tmp_path, content, env, names):
    path = tmp_path / "hooks.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=names):
        WebhooksConfig.from_env({"WEBHOOKS_CONFIG": str(path), **env})


def test_no_subscription_or_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="WEBHOOK_URL"):
        WebhooksConfig.from_env({})
    with pytest.raises(ConfigError, match="cannot read"):
        WebhooksConfig.from_env({"WEBHOOKS_CONFIG": str(tmp_path / "missing.yaml")})
