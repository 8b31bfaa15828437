"""Deterministic test data: contact payloads, their encoded records, Airy messages and metadata."""

from __future__ import annotations

import json
import random
import time
import uuid

from contacts_streams import model
from contacts_dev.airy import airy_message
from contacts_streams.serialization import ContactCodec, message_codec, metadata_codec

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Linus",
         "Radia", "John", "Katherine", "Dennis", "Sophie", "Tim", "Hedy", "Claude", "Anita", "Niklaus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton",
        "Torvalds", "Perlman", "McCarthy", "Johnson", "Ritchie", "Wilson", "Berners-Lee", "Lamarr",
        "Shannon", "Borg", "Wirth"]
SOURCES = ["facebook", "twilio.sms", "google", "chatplugin", "whatsapp"]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def contact_payload(rng: random.Random, i: int) -> dict:
    """A create payload of a typical size (~300 bytes): name, via, title, locale, a conversation."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "display_name": f"{first} {last} {rng.randrange(1_000_000):06d}",
        "title": "Customer",
        "locale": "en_US",
        "timezone": rng.choice([-5, 0, 1, 2, 5.5, "+01:00"]),
        "via": {"email": f"{first.lower()}.{last.lower()}{i}@example.org", "phone": f"+1555{i:07d}"},
        "conversations": {_uuid(rng): rng.choice(SOURCES)},
        "metadata": {"tier": rng.choice(["free", "pro"]), "visits": rng.randrange(100)},
    }


def share_identities(items: list[dict], start: int, every: int = 100) -> list[dict]:
    """One payload in ``every`` (by its index ``start + i`` in the whole fill; the middle one of
    each ``every``, so that a batch of ``every`` has one) takes the e-mail or, alternately, the
    phone of the payload before it: 1% of the contacts have a duplicate, so that
    ``contacts.duplicates`` has groups to page through."""
    for i in range(1, len(items)):
        n = start + i
        if n % every == every // 2:
            kind = "email" if (n // every) % 2 else "phone"
            items[i]["via"][kind] = items[i - 1]["via"][kind]
    return items


def payloads(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [contact_payload(rng, i) for i in range(n)]


def import_bodies(items: list[dict], batch: int) -> list[bytes]:
    return [json.dumps(items[i : i + batch], separators=(",", ":")).encode() for i in range(0, len(items), batch)]


def encoded_contacts(items: list[dict], codec: ContactCodec | None = None) -> list[tuple[bytes, bytes]]:
    """(key, value) records as the service would publish them for these create payloads."""
    codec = codec or ContactCodec()
    now = model.now_ms()
    out = []
    for fields in items:
        contact = model.new_contact(model.validate_create(fields), str(uuid.uuid4()), now)
        out.append((contact["id"].encode(), codec.encode_contact(contact)))
    return out


def airy_conversations(n: int, seed: int = 2) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(_uuid(rng), SOURCES[i % len(SOURCES)]) for i in range(n)]


def airy_messages(conversations: list[tuple[str, str]], total: int, seed: int = 3):
    """`total` encoded Airy Message records (key, value) spread over the conversations, shuffled,
    every conversation having at least one."""
    codec = message_codec()
    rng = random.Random(seed)
    order = [conversations[i % len(conversations)] for i in range(total)]
    rng.shuffle(order)
    now = int(time.time() * 1000)
    for n, (conversation_id, source) in enumerate(order):
        message_id = _uuid(rng)
        record = airy_message(conversation_id, source, message_id, now + n)
        yield message_id.encode(), codec.encode(record)


def airy_metadata(conversations: list[tuple[str, str]], every: int = 10):
    """A display name for every `every`-th conversation (the join auto-create does)."""
    codec = metadata_codec()
    now = int(time.time() * 1000)
    for i, (conversation_id, _source) in enumerate(conversations):
        if i % every:
            continue
        record = {
            "subject": f"conversation:{conversation_id}",
            "key": "contact.display_name",
            "value": f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]}",
            "valueType": "text",
            "timestamp": now,
        }
        yield f"conversation:{conversation_id}:contact.display_name".encode(), codec.encode(record)
