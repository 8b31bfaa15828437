"""`contacts demo`: a realistic stream of the platform's conversations, for auto-create to work on.

It writes Airy's own records, encoded as the platform and the service read them (Confluent wire
format with ``KAFKA_SCHEMA_REGISTRY_URL``, single-object encoding without), to the platform's
messages and metadata topics:

- a few hundred conversations from ``facebook``, ``twilio.sms``, ``whatsapp`` and ``google``,
  several messages each (from the contact and from an agent);
- names (``contact.display_name``) and avatars (``contact.avatar_url``) in metadata for the
  conversations whose source knows them, some arriving before the first message, some after it
  (the contact is then created with Airy's default name, which the real name replaces);
- some people writing on two channels (two conversations, two contacts with one name).

Then it creates, through the HTTP API as a CRM import would, a few people twice or three times
with the same e-mail or phone written differently (auto-create fills only names and avatars,
never ``via``), some of them people of the demo's conversations: what a duplicates view shows.
It waits until every conversation has its contact with the name it should have, and prints what
happened and the curl lines to look at it.

The data comes from a seeded random generator (:func:`make_plan`): the same seed gives the same
conversations, a new seed (the default) new conversation ids, so running it again adds to what
is there and never fails on what an earlier run made.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

from contacts_dev.airy import airy_message, airy_metadata
from contacts_streams import model

SOURCES = ("facebook", "twilio.sms", "whatsapp", "google")
# How often each source occurs, how often it knows the person's name and, of those, an avatar.
SOURCE_WEIGHTS = {"facebook": 35, "twilio.sms": 20, "whatsapp": 30, "google": 15}
NAME_CHANCE = {"facebook": 0.85, "twilio.sms": 0.15, "whatsapp": 0.55, "google": 0.8}
AVATAR_CHANCE = {"facebook": 0.7, "twilio.sms": 0.0, "whatsapp": 0.0, "google": 0.4}
SECOND_CHANNEL_CHANCE = 0.06
DISPLAY_NAME, AVATAR_URL = "contact.display_name", "contact.avatar_url"

FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Anders", "Aiko", "Beatriz", "Bilal", "Carmen", "Chen", "Dagny", "Dmitri",
    "Elif", "Emeka", "Fatima", "Finn", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jamal", "Jana",
    "Kai", "Karin", "Lars", "Leila", "Luca", "Maja", "Mateo", "Mei", "Nadia", "Nils", "Noor",
    "Olga", "Omar", "Paula", "Priya", "Rafael", "Rosa", "Sami", "Sofia", "Tariq", "Thea", "Tomás",
    "Uma", "Viktor", "Wen", "Yara", "Yusuf", "Zoe",
)
LAST_NAMES = (
    "Abebe", "Andersson", "Bauer", "Castillo", "Costa", "Dubois", "Eriksen", "Fischer", "García",
    "Haddad", "Hoffmann", "Ivanova", "Jensen", "Kaya", "Kim", "Kowalski", "Lindqvist", "Lopes",
    "Mensah", "Müller", "Nakamura", "Novak", "Okafor", "Olsen", "Petrov", "Quinn", "Rossi",
    "Santos", "Schmidt", "Silva", "Tanaka", "Torres", "Van Dijk", "Wagner", "Wang", "Yilmaz", "Zhang",
)
CONTACT_LINES = (
    "Hi, I ordered last week and the parcel has not arrived yet.",
    "Hello! Do you ship to Portugal?",
    "Can I change the size of my order?",
    "My discount code does not work at checkout.",
    "Thanks, that worked!",
    "Is the blue one back in stock?",
    "I'd like to cancel my subscription.",
    "What are your opening hours on Sunday?",
    "The tracking link says delivered but I have nothing.",
    "Perfect, thank you so much 🙏",
    "Could you send me the invoice again?",
    "ok",
)
AGENT_LINES = (
    "Hi! Thanks for reaching out, let me check that for you.",
    "Could you send me your order number?",
    "I've just sent you a new link.",
    "Done: you'll get a confirmation e-mail in a minute.",
    "Yes, we do! Shipping takes 3-5 working days.",
    "Sorry about that, a replacement is on its way.",
)
COMPANIES = ("Acme Retail", "Northwind", "Globex", "Initech", "Umbrella Foods", "Stark Logistics")


@dataclass(frozen=True)
class DemoMessage:
    id: str
    sent_at: int  # ms
    from_contact: bool
    text: str


@dataclass(frozen=True)
class Conversation:
    id: str
    source: str
    channel_id: str
    sender_id: str
    messages: tuple[DemoMessage, ...]
    name: str | None = None  # sent as contact.display_name metadata
    avatar_url: str | None = None  # sent as contact.avatar_url metadata
    metadata_at: int | None = None  # ms; before or after the first message

    @property
    def expected_name(self) -> str:
        """The name its auto-created contact ends up with (DESIGN.md, "Auto-create")."""
        return self.name or model.default_display_name(self.id, self.source)

    @property
    def metadata_first(self) -> bool:
        return self.metadata_at is not None and self.metadata_at < self.messages[0].sent_at


@dataclass(frozen=True)
class Plan:
    seed: int
    conversations: tuple[Conversation, ...]
    people: tuple[dict, ...]  # contacts.create payloads: the CRM's duplicate people
    duplicate_groups: int = 0

    def stream(self) -> Iterator[tuple[int, str, dict]]:
        """(time, "message" or "metadata", Airy record) in the order they happened."""
        events: list[tuple[int, int, str, dict]] = []
        for conversation in self.conversations:
            for message in conversation.messages:
                record = airy_message(conversation.id, conversation.source, message.id, message.sent_at, json.dumps({"text": message.text}, ensure_ascii=False))
                record["channelId"] = conversation.channel_id
                record["senderId"] = conversation.sender_id if message.from_contact else "agent"
                record["isFromContact"] = message.from_contact
                events.append((message.sent_at, len(events), "message", record))
            for key, value in ((DISPLAY_NAME, conversation.name), (AVATAR_URL, conversation.avatar_url)):
                if value and conversation.metadata_at is not None:
                    events.append((conversation.metadata_at, len(events), "metadata", airy_metadata(conversation.id, key, value, conversation.metadata_at)))
        for at, _, kind, record in sorted(events, key=lambda e: (e[0], e[1])):
            yield at, kind, record


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _slug(name: str) -> str:
    import unicodedata

    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return ".".join(part.lower() for part in ascii_name.replace("-", " ").split())


def _sender(rng: random.Random, source: str) -> str:
    if source == "facebook":
        return str(rng.randrange(10**15, 10**16))  # a page-scoped id
    if source in ("twilio.sms", "whatsapp"):
        number = f"+4477009{rng.randrange(10**5):05d}"  # Ofcom's range for fiction
        return f"whatsapp:{number}" if source == "whatsapp" else number
    return _uuid(rng)  # google: an opaque conversation-scoped id


def make_plan(seed: int, conversations: int = 300, now_ms: int | None = None, duplicate_groups: int = 6) -> Plan:
    """The demo's data, the same for the same arguments (``now_ms`` only moves the times)."""
    rng = random.Random(seed)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    channels = {source: _uuid(rng) for source in SOURCES}
    sources, weights = zip(*SOURCE_WEIGHTS.items())
    made: list[Conversation] = []
    named: list[Conversation] = []
    for _ in range(conversations):
        if named and rng.random() < SECOND_CHANNEL_CHANCE:
            # Someone who wrote on one channel writes on another: a second conversation and contact.
            first = rng.choice(named)
            source = rng.choice([s for s in SOURCES if s != first.source and NAME_CHANCE[s] > 0.5])
            name = first.name
        else:
            source = rng.choices(sources, weights)[0]
            name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}" if rng.random() < NAME_CHANCE[source] else None
        conversation_id = _uuid(rng)
        avatar = None
        if name and rng.random() < AVATAR_CHANCE[source]:
            avatar = f"https://avatars.example.org/{_slug(name)}-{conversation_id[:8]}.jpg"
        gaps = [rng.randrange(20_000, 2 * 3600 * 1000) for _ in range(rng.choices((1, 2, 3, 4, 5, 6), (10, 25, 25, 20, 12, 8))[0] - 1)]
        at = now - rng.randrange(60_000, 3 * 24 * 3600 * 1000) - sum(gaps)  # all in the past
        messages = []
        for i, gap in enumerate(gaps + [0]):
            from_contact = i % 2 == 0 or rng.random() < 0.3
            text = rng.choice(CONTACT_LINES if from_contact else AGENT_LINES)
            messages.append(DemoMessage(_uuid(rng), at, from_contact, text))
            at += gap
        metadata_at = None
        if name or avatar:
            first_at = messages[0].sent_at
            # Half the sources' profiles arrive before the first message, half after it.
            if rng.random() < 0.5:
                metadata_at = first_at - rng.randrange(1, 5000)
            else:
                metadata_at = first_at + rng.randrange(1000, min(600_000, now - first_at))
        conversation = Conversation(conversation_id, source, channels[source], _sender(rng, source), tuple(messages), name, avatar, metadata_at)
        made.append(conversation)
        if name:
            named.append(conversation)
    people = _duplicate_people(rng, named, duplicate_groups)
    return Plan(seed, tuple(made), tuple(people), duplicate_groups)


def _duplicate_people(rng: random.Random, named: list[Conversation], groups: int) -> list[dict]:
    """People a CRM import brings twice or three times: the same e-mail or phone written
    differently, half of them people the conversations show (by name)."""
    people = []
    for group in range(groups):
        if group % 2 == 0 and named:
            name = rng.choice(named).name
        else:
            name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        first, last = name.split(" ", 1)
        slug = _slug(name)
        email = f"{slug}@example.com"
        phone_digits = f"7700900{rng.randrange(1000):03d}"  # +44 7700 900xxx: numbers for fiction
        company = rng.choice(COMPANIES)
        crm = {"crm": "demo", "crm_id": f"CRM-{rng.randrange(10**6):06d}"}
        people.append({"display_name": name, "organization_name": company, "via": {"email": email, "phone": f"+44 {phone_digits[:4]} {phone_digits[4:]}"}, "metadata": crm})
        if group % 2 == 0:
            # The same address in another spelling: normalized e-mails are equal.
            people.append({"display_name": f"{first[0]}. {last}", "via": {"email": email.upper() if rng.random() < 0.5 else f"{slug.title()}@Example.com"}, "metadata": {"crm": "demo", "crm_id": f"CRM-{rng.randrange(10**6):06d}"}})
        else:
            people.append({"display_name": name, "title": rng.choice(("Buyer", "Owner", "Office manager")), "via": {"phone": f"+44{phone_digits}"}, "metadata": {"crm": "demo", "crm_id": f"CRM-{rng.randrange(10**6):06d}"}})
        if group % 3 == 0:
            people.append({"display_name": name.upper(), "via": {"email": email, "phone": f"+44 {phone_digits[:4]}-{phone_digits[4:]}"}, "metadata": {"crm": "demo", "import": "legacy"}})
    return people


# --- running it ----------------------------------------------------------------------------------


@dataclass
class Target:
    brokers: str
    url: str
    token: str | None = None
    schema_registry_url: str | None = None
    messages_topic: str = "application.communication.messages"
    metadata_topic: str = "application.communication.metadata"


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


@dataclass
class Result:
    produced: Counter = field(default_factory=Counter)
    people: list[dict] = field(default_factory=list)  # the created contacts
    settled: int = 0
    waited_s: float = 0.0


def _http(target: Target, path: str, body: dict | None = None, timeout: float = 15.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(target.url.rstrip("/") + path, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    if target.token:
        request.add_header("Authorization", f"Bearer {target.token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"{}")
        except ValueError:
            return err.code, {}


def wait_service_ready(target: Target, timeout: float = 60.0, say: Callable[[str], None] = print) -> None:
    deadline, said = time.monotonic() + timeout, False
    while True:
        try:
            status, body = _http(target, "/actuator/health/readiness", timeout=5)
        except (urllib.error.URLError, OSError) as err:
            raise DemoError(f"no service answers at {target.url} ({err}): start `make run` or pass --url") from None
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"the service at {target.url} is not ready after {timeout:.0f}s: {body.get('reason', body)}")
        if not said:
            say(f"waiting for the service at {target.url} to be ready ({body.get('reason', status)})")
            said = True
        time.sleep(0.5)


def _ensure_topics(target: Target, say: Callable[[str], None]) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": target.brokers})
    try:
        existing = admin.list_topics(timeout=15).topics
    except KafkaException as err:
        raise DemoError(f"no Kafka broker answers at {target.brokers}: {err}") from None
    missing = [t for t in (target.messages_topic, target.metadata_topic) if t not in existing]
    if not missing:
        return
    for name, future in admin.create_topics([NewTopic(t, 4, -1) for t in missing], operation_timeout=30).items():
        try:
            future.result(30)
            say(f"created the topic {name} (a service subscribed before may take a few minutes to see it)")
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise DemoError(f"cannot create {name}: {err}") from None


def produce(plan: Plan, target: Target, result: Result) -> None:
    from confluent_kafka import Producer

    from contacts_streams.serialization import message_codec, metadata_codec

    registry = target.schema_registry_url
    messages = message_codec(registry, subject=f"{target.messages_topic}-value")
    metadata = metadata_codec(registry, subject=f"{target.metadata_topic}-value")
    failures: list = []
    producer = Producer({"bootstrap.servers": target.brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 10})

    def delivered(err, _msg):
        if err is not None:
            failures.append(err)

    for _, kind, record in plan.stream():
        if kind == "message":
            # The platform keys messages by message id and metadata by subject and key.
            producer.produce(target.messages_topic, key=record["id"].encode(), value=messages.encode(record), on_delivery=delivered)
        else:
            key = f"{record['subject']}:{record['key']}"
            producer.produce(target.metadata_topic, key=key.encode(), value=metadata.encode(record), on_delivery=delivered)
        result.produced[kind] += 1
        producer.poll(0)
    remaining = producer.flush(30)
    if remaining or failures:
        raise DemoError(f"the broker at {target.brokers} did not take every record: {remaining} unsent, errors {failures[:3]}")


def create_people(plan: Plan, target: Target, result: Result, say: Callable[[str], None]) -> None:
    for person in plan.people:
        status, body = _http(target, "/contacts.create", person)
        if status == 201:
            result.people.append(body)
        else:
            say(f"contacts.create answered {status} for {person['display_name']}: {body.get('message', body)}")


def wait_auto_created(plan: Plan, target: Target, result: Result, timeout: float, say: Callable[[str], None]) -> None:
    """Until every conversation's contact exists with the name it should have."""
    started = time.monotonic()
    pending = {c.id: c.expected_name for c in plan.conversations}
    last_said = started
    while pending:
        for conversation_id, name in list(pending.items()):
            status, body = _http(target, "/contacts.info", {"conversation_id": conversation_id})
            if status == 200 and body.get("display_name") == name:
                del pending[conversation_id]
        if not pending:
            break
        now = time.monotonic()
        if now - started > timeout:
            break
        if now - last_said > 5:
            say(f"  {len(plan.conversations) - len(pending)} of {len(plan.conversations)} conversations have their contact")
            last_said = now
        time.sleep(0.5)
    result.settled = len(plan.conversations) - len(pending)
    result.waited_s = time.monotonic() - started


def run(plan: Plan, target: Target, wait_s: float = 120.0, say: Callable[[str], None] = print) -> int:
    wait_service_ready(target, say=say)
    _ensure_topics(target, say)
    started = time.monotonic()
    result = Result()
    produce(plan, target, result)
    conversations = plan.conversations
    by_source = Counter(c.source for c in conversations)
    named = sum(1 for c in conversations if c.name)
    say(
        f"wrote {len(conversations)} conversations ({', '.join(f'{n} {s}' for s, n in sorted(by_source.items()))}): "
        f"{result.produced['message']} messages to {target.messages_topic}, {result.produced['metadata']} metadata records "
        f"to {target.metadata_topic} ({'registry' if target.schema_registry_url else 'single-object'} encoding) "
        f"in {time.monotonic() - started:.1f}s"
    )
    say(
        f"  {named} with a name in metadata ({sum(1 for c in conversations if c.name and c.metadata_first)} sent before the first "
        f"message, the others after it), {sum(1 for c in conversations if c.avatar_url)} with an avatar, "
        f"{len(conversations) - named} without a name (they keep Airy's default name, e.g. \"{_example_default(conversations)}\")"
    )
    create_people(plan, target, result, say)
    say(f"created {len(result.people)} of {len(plan.people)} people through contacts.create as a CRM import would: "
        f"{plan.duplicate_groups} people two or three times, with the same e-mail or phone written differently")
    code = 0
    if wait_s > 0:
        wait_auto_created(plan, target, result, wait_s, say)
        if result.settled == len(conversations):
            say(f"auto-create: all {len(conversations)} conversations have their contact with its name, {result.waited_s:.1f}s after the last write")
        else:
            say(f"auto-create: only {result.settled} of {len(conversations)} conversations have their contact with its name "
                f"after {result.waited_s:.0f}s (is AUTO_CREATE_ENABLED false? does the service read {target.messages_topic}?)")
            code = 1
    _print_curls(plan, target, result, say)
    return code


def _example_default(conversations: tuple[Conversation, ...]) -> str:
    unnamed = [c for c in conversations if not c.name]
    return unnamed[0].expected_name if unnamed else model.default_display_name("0123456789", "twilio.sms")


def _print_curls(plan: Plan, target: Target, result: Result, say: Callable[[str], None]) -> None:
    auth = ' -H "Authorization: Bearer $TOKEN"' if target.token else ""
    base = target.url.rstrip("/")
    named = next((c for c in plan.conversations if c.name), plan.conversations[0] if plan.conversations else None)
    say("\nlook at the result:")
    say(f"  curl -s{auth} {base}/contacts.list -d '{{\"page_size\": 10}}'")
    if named is not None:
        say(f"  curl -s{auth} {base}/contacts.info -d '{{\"conversation_id\": \"{named.id}\"}}'   # {named.expected_name}, {named.source}")
    if result.people:
        person = result.people[0]
        say(f"  curl -s{auth} {base}/contacts.info -d '{{\"id\": \"{person['id']}\"}}'   # {person.get('display_name')}, from the CRM")


def target_from(args, environ=os.environ) -> Target:
    """Where to write: flags first, then the environment, then what a running `make run` wrote."""
    from contacts_dev import run as make_run

    kept = make_run.running() or {}
    brokers = args.brokers or environ.get("KAFKA_BROKERS") or kept.get("brokers")
    if not brokers:
        raise DemoError("no Kafka broker: start `make run` (the demo finds its broker), or pass --brokers or set KAFKA_BROKERS")
    registry = args.schema_registry_url or environ.get("KAFKA_SCHEMA_REGISTRY_URL") or kept.get("schema_registry_url")
    return Target(
        brokers=brokers,
        url=args.url or kept.get("url") or "http://localhost:8080",
        token=args.token or environ.get("systemToken") or None,
        schema_registry_url=registry or None,
        messages_topic=environ.get("MESSAGES_TOPIC") or "application.communication.messages",
        metadata_topic=environ.get("METADATA_TOPIC") or "application.communication.metadata",
    )


def main(args) -> int:
    """`contacts demo` (contacts_cli/demo.py parses the arguments)."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        target = target_from(args)
        plan = make_plan(seed, args.conversations, duplicate_groups=args.duplicate_groups)
        print(f"demo seed {seed} (`--seed {seed}` writes the same conversations again): {target.brokers}, {target.url}")
        return run(plan, target, wait_s=args.wait)
    except DemoError as err:
        print(f"contacts demo: {err}", file=sys.stderr)
        return 1
