"""Write a realistic stream of Airy conversations (facebook, twilio.sms, whatsapp, google) to the
platform's messages and metadata topics, for auto-create to turn into contacts, and create a few
duplicate people through the API as a CRM import would. With `make run` it finds the broker and
the service by itself; it waits until every conversation has its contact and prints the curl
lines to look at them. Development support: it needs a clone of the repository."""

from __future__ import annotations

import argparse
import sys

HELP = "write demo conversations for auto-create, and some duplicate people (needs a clone)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brokers", help="Kafka bootstrap servers [default: KAFKA_BROKERS, else the broker of a running `make run`]")
    parser.add_argument("--url", help="the service's URL, for the people and to watch the result [default: `make run`'s, else http://localhost:8080]")
    parser.add_argument("--token", help="a token for the service's API when auth is on [default: systemToken]")
    parser.add_argument("--schema-registry-url", help="encode with the registry's wire format [default: KAFKA_SCHEMA_REGISTRY_URL, else `make run`'s; none: single-object encoding]")
    parser.add_argument("--conversations", type=_positive, default=300, help="how many conversations [default: 300]")
    parser.add_argument("--duplicate-groups", type=_not_negative, default=6, help="people the CRM has two or three times [default: 6]")
    parser.add_argument("--seed", type=int, help="the random seed: the same seed writes the same conversations [default: a new one]")
    parser.add_argument("--wait", type=float, default=120.0, metavar="SECONDS", help="wait this long for every conversation's contact; 0: don't wait [default: 120]")


def run(args: argparse.Namespace) -> int:
    try:
        from contacts_dev import demo
    except ImportError:
        print(
            "contacts demo is development support and needs a clone of the repository "
            "(its contacts_dev package is not installed here, e.g. in the service's image): "
            "run it from a clone with `make demo`",
            file=sys.stderr,
        )
        return 2
    return demo.main(args)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value
