"""`python -m bench.validation [--rounds N]`: what request validation costs, in µs per contact.

Validates typical bodies the way the API does (model.validate_*, the ignored-fields list
included): a create (the seed page's contact, every field), an update (a few fields, a
removal), and an import of 1000 contacts of bench.data's typical size, in both of its forms.
Prints the best of N rounds (the machine is shared: the best round is the least disturbed).
"""

from __future__ import annotations

import argparse
import time
import uuid

from bench.data import payloads
from contacts_dev.examples import SEED_CONTACT
from contacts_streams import model

CREATE = SEED_CONTACT
UPDATE = {"id": str(uuid.uuid4()), "title": "Rear Admiral", "via": {"email": "", "phone": "+1555"}, "locale": ""}


def _best(call, rounds: int, per: int) -> float:
    """µs per item of the fastest round."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best / per * 1e6


def measure(rounds: int = 20) -> dict[str, float]:
    contacts = payloads(1000)
    wrapped = {"contacts": contacts, "upsert_by": "email"}
    many = 200
    return {
        "create (all fields)": _best(lambda: [model.validate_create(CREATE, []) for _ in range(many)], rounds, many),
        "update (4 fields)": _best(lambda: [model.validate_update(UPDATE, []) for _ in range(many)], rounds, many),
        "import 1000, array": _best(lambda: model.validate_import_request(contacts, []), rounds, len(contacts)),
        "import 1000, object": _best(lambda: model.validate_import_request(wrapped, []), rounds, len(contacts)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.validation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds; the best is reported [20]")
    args = parser.parse_args(argv)
    for name, micros in measure(args.rounds).items():
        print(f"{name:22} {micros:7.1f} µs per contact")


if __name__ == "__main__":
    main()
