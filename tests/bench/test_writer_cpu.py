"""The write-path bench (bench/writer_cpu.py) at a tiny size, without a broker, so that it
cannot rot: every kind runs its three stages and what it wrote is in the store."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import writer_cpu  # noqa: E402
from contacts_streams.events import EventCodec  # noqa: E402
from contacts_streams.serialization import ContactCodec  # noqa: E402
from contacts_streams.store import Store  # noqa: E402


@pytest.mark.parametrize("kind", writer_cpu.KINDS)
def test_every_kind_runs_its_stages_into_a_real_store(tmp_path, kind):
    store = Store(tmp_path / "store", ContactCodec(), event_codec=EventCodec(subject=None))
    try:
        figures = writer_cpu.run(kind, contacts=20, batch=4, rounds=2, store=store)
        assert set(figures) == {"send", "decide", "apply", "total"}
        assert all(len(values) == 2 and all(v >= 0 for v in values) for values in figures.values())
        assert store.count() >= (4 if kind in ("create", "update") else 20) * 3  # warm-up and two rounds
        some = next(iter(store._cf["derived"].keys()))
        assert store.history.page(some.decode(), None, 10).events  # the events were applied too
    finally:
        store.close()
