"""``contacts.history``: a contact's recent change events, newest first, from the own store.

The store's history part is materialized from the events topic (``store.EventHistory``). A
history read first waits until that part has applied the events topic's committed end as of
now, so whatever write was answered before the read (on any replica) is in it; while the broker
does not answer that question, a caught-up part answers as it is.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from contacts_streams.config import Config
from contacts_streams.decisions import NotFound
from contacts_streams.materializer import Materializer
from contacts_streams.publisher import Unavailable
from contacts_streams.store import HistoryPage, Store

log = logging.getLogger(__name__)

ENDS_TIMEOUT_S = 2.0
# Longer, and a history read during a rebuild of the events would hold an HTTP thread.
READY_WAIT_S = 2.0


class History:
    def __init__(self, config: Config, store: Store, materializer: Materializer):
        self._config = config
        self._store = store
        self._materializer = materializer
        self._topic = config.events_topic
        self._timeout = config.write_timeout_ms / 1000
        self._admin: AdminClient | None = None
        self._lock = threading.Lock()
        store.history.retention_ms = config.erase_within_ms

    def page(self, contact_id: str, cursor: str | None, page_size: int) -> HistoryPage:
        """NotFound for an id that was never a contact here (a live, merged-away or erased id with
        events is known); Unavailable while the events are not read up to the committed end."""
        # It starts once the contacts store is ready (a rebuild first): a read just after
        # that waits for it rather than answering 503 for a moment.
        if not self._materializer.wait_ready(min(self._timeout, READY_WAIT_S)):
            raise Unavailable(f"the history is not available yet: {self._materializer.status()}")
        ends = self._committed_ends()
        if ends is not None and not self._materializer.wait_reached(ends, self._timeout):
            raise Unavailable("this replica has not read the latest change events yet")
        page = self._store.history.page(contact_id, cursor, page_size)
        if page.events or cursor or self._store.get_bytes(contact_id) is not None:
            return page
        destination = self._store.merged_into(contact_id)
        if destination is not None:
            return page
        raise NotFound(f"contact {contact_id} (id) does not exist")

    def _committed_ends(self) -> dict[int, int] | None:
        try:
            with self._lock:
                if self._admin is None:
                    self._admin = AdminClient(self._config.kafka())
                admin = self._admin
            described = admin.list_topics(self._topic, timeout=ENDS_TIMEOUT_S).topics[self._topic]
            request = {TopicPartition(self._topic, p): OffsetSpec.latest() for p in described.partitions}
            futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=ENDS_TIMEOUT_S)
            return {tp.partition: future.result().offset for tp, future in futures.items()}
        except (KafkaException, KeyError) as err:
            log.warning("history: cannot read the committed end of %s, answering from the store as it is: %s", self._topic, err)
            return None

    def close(self) -> None:
        self._admin = None
