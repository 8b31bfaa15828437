"""The HTTP side of a write: sends a command to the writer, waits for its reply, then until the
own store has applied what the writer produced (DESIGN.md, "Writes: commands and the writer").

``CommandClient.send`` is the one way in for every HTTP write; the auto-create routers send
their commands in their own transactions. ``ReplyListener`` reads the replies topic (assigned,
not subscribed: every replica reads every reply) and hands each reply to the request waiting
for it.

It also knows the record limit of the contacts topic (read at start), which the writer checks
every contact record against: a record the broker would refuse is a 413 before anything of its
write is produced, never a 503 for ever and never half of a transaction.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from contacts_streams import commands, model, topics
from contacts_streams.commands import BadCommand, Command, Idempotency, Reply
from contacts_streams.config import Config
from contacts_streams.materializer import Materializer
from contacts_streams.metrics import Metrics
from contacts_streams.polling import poll_batch

log = logging.getLogger(__name__)

# librdkafka's message.max.bytes default, below the broker's default max.message.bytes (1048588).
DEFAULT_RECORD_LIMIT = 1_000_000
DEFAULT_BATCH_BYTES = 1_000_000  # librdkafka's batch.size default
# Room for what the broker counts beyond key, value and headers: the record batch header
# (61 bytes), the record's own framing (varints, at most ~25 bytes) and each header's framing.
RECORD_FRAMING_BYTES = 512
# A topic just created may not be known to every broker yet: asked again, it is.
_TRANSIENT = (KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError.UNKNOWN_TOPIC_OR_PART)


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.2f} MB"


class Unavailable(RuntimeError):
    """The write was not answered in time: its outcome is unknown, the client may retry (with
    the same Idempotency-Key, safely)."""


class TooLarge(model.TooLarge):
    """The write cannot be sent to the writer at all (413)."""


class _Waiter:
    __slots__ = ("event", "reply", "failure")

    def __init__(self):
        self.event = threading.Event()
        self.reply: Reply | None = None
        self.failure: str | None = None


class ReplyListener:
    def __init__(self, config: Config, metrics: Metrics):
        self._config = config
        self._metrics = metrics
        self._topic = topics.replies_topic(config)
        self._waiting: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self.failure: BaseException | None = None

    @property
    def ready(self) -> bool:
        return self._consumer is not None and self.failure is None

    def start(self) -> None:
        """Assign the replies partition at its current end: a reply to any command sent from now
        on lies beyond it. Raises when the broker cannot say where the end is (the caller retries)."""
        consumer = Consumer(
            self._config.kafka(
                **{
                    "group.id": f"{self._config.application_id}-replies-{self._config.instance_id}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 50,
                    "fetch.error.backoff.ms": 50,
                }
            )
        )
        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(self._topic, 0), timeout=10)
            consumer.assign([TopicPartition(self._topic, 0, high)])
        except KafkaException:
            consumer.close()
            raise
        self._consumer = consumer
        self._thread = threading.Thread(target=self._run, args=(consumer,), name="reply-listener", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def expect(self, command_id: str) -> _Waiter:
        waiter = _Waiter()
        with self._lock:
            self._waiting[command_id] = waiter
        return waiter

    def forget(self, command_id: str) -> None:
        with self._lock:
            self._waiting.pop(command_id, None)

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    batch = poll_batch(consumer, 1000, 0.1)
                except KafkaException as err:  # the broker away: keep listening from where it was
                    log.warning("replies: %s", err)
                    time.sleep(0.5)
                    continue
                for msg in batch:
                    error = msg.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("replies: %s", error)
                        continue
                    key = msg.key()
                    with self._lock:
                        waiter = self._waiting.pop(key.decode("utf-8", "replace"), None) if key else None
                    if waiter is None:
                        continue  # another replica's, or one nobody waits for any more
                    try:
                        waiter.reply = Reply.decode(msg.value())
                    except BadCommand as err:
                        waiter.failure = str(err)
                    waiter.event.set()
        except BaseException as err:
            log.exception("reply listener stopped")
            self.failure = err
        finally:
            consumer.close()


class CommandClient:
    def __init__(self, config: Config, listener: ReplyListener, materializer: Materializer, metrics: Metrics):
        self._config = config
        self._topic = topics.commands_topic(config)
        self._listener = listener
        self._materializer = materializer
        self._metrics = metrics
        # Looked up once: labels() costs as much again as the observation, twice a write.
        self._reply_wait = metrics.write_wait_seconds.labels(stage="reply")
        self._store_wait = metrics.write_wait_seconds.labels(stage="store")
        self._timeout = config.write_timeout_ms / 1000
        self._replacing = threading.Lock()
        self._producer = self._new_producer()
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="command-producer-poll", daemon=True)
        self._poller.start()
        self.record_limit = DEFAULT_RECORD_LIMIT - RECORD_FRAMING_BYTES
        # What the writer's producer needs to keep batches under the limit too.
        self.producer_limits: dict[str, int] = {}

    def start(self) -> None:
        """Read the contacts topic's record limit: the largest record every producer of the
        service can write there, the topic's max.message.bytes (the broker's message.max.bytes
        unless the topic overrides it) or the producers' message.max.bytes (librdkafka's
        1,000,000 unless set with KAFKA_CONFIG_MESSAGE_MAX_BYTES), whichever is smaller, less
        framing. Batches of several records are kept under it too (batch.size)."""
        topic = self._config.contacts_topic
        topic_limit = None
        admin = AdminClient(self._config.kafka())
        resource = ConfigResource(ResourceType.TOPIC, topic)
        try:
            described = admin.describe_configs([resource], request_timeout=self._timeout)[resource].result(self._timeout)
            topic_limit = int(described["max.message.bytes"].value)
        except (KafkaException, concurrent.futures.TimeoutError) as err:
            error = err.args[0] if isinstance(err, KafkaException) and err.args else None
            if not isinstance(error, KafkaError) or error.retriable() or error.code() in _TRANSIENT:
                raise Unavailable(f"cannot read max.message.bytes of {topic} yet: {err}") from err
            log.warning("cannot read max.message.bytes of %s, assuming the producers' limit: %s", topic, err)
        producer_limit = int(self._config.kafka().get("message.max.bytes", DEFAULT_RECORD_LIMIT))
        limit = min(topic_limit or DEFAULT_RECORD_LIMIT, producer_limit)
        self.producer_limits = {"batch.size": max(1, min(DEFAULT_BATCH_BYTES, limit))}
        self.record_limit = limit - RECORD_FRAMING_BYTES
        log.info(
            "records of %s may be up to %d bytes (topic max.message.bytes %s, producer message.max.bytes %d)",
            topic,
            self.record_limit,
            topic_limit,
            producer_limit,
        )

    def _new_producer(self) -> Producer:
        return Producer(
            self._config.producer(
                **{
                    "linger.ms": 0,  # a single write waits for nothing; concurrent ones still batch
                    "message.max.bytes": topics.COMMANDS_MAX_MESSAGE_BYTES,
                    "message.timeout.ms": self._config.write_timeout_ms,
                }
            )
        )

    def _replace_if_fatal(self, producer: Producer, error: KafkaError | None) -> None:
        """An idempotent producer that hit a fatal error (its sequence numbers out of step after
        a long outage, say) refuses every later produce: a new one takes its place. What the old
        one still held is answered 503 when its requests time out."""
        if error is None or not (error.fatal() or error.code() == KafkaError._FATAL):
            return
        with self._replacing:
            if self._producer is producer:
                log.warning("the command producer failed (%s): replacing it", error)
                self._producer = self._new_producer()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.05)

    def deadline(self) -> float:
        """A request's deadline (monotonic) when it starts: every step of its write shares it."""
        return time.monotonic() + self._timeout

    def send(
        self,
        type_: str,
        payload: dict,
        deadline: float | None = None,
        actor: str = commands.SYSTEM,
        origin: str = commands.ORIGIN_HTTP,
        idempotency: Idempotency | None = None,
    ) -> Reply:
        """Send a command and return the writer's reply once the own store has applied what it
        produced. Raises Unavailable when that does not happen by the deadline, TooLarge when
        the command cannot be sent."""
        deadline = deadline if deadline is not None else self.deadline()
        remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        command = Command.new(
            type_,
            payload,
            sender=self._config.instance_id,
            deadline_ms=model.now_ms() + remaining_ms,
            actor=actor,
            origin=origin,
            idempotency=idempotency,
        )
        raw = command.encode()
        if len(raw) > commands.MAX_COMMAND_BYTES:
            raise TooLarge(
                f"the write is {len(raw)} bytes as a command, more than the {commands.MAX_COMMAND_BYTES} the service takes"
            )
        started = time.perf_counter()
        waiter = self._listener.expect(command.id)
        try:
            producer = self._producer

            def delivered(err, _msg):
                if err is not None:
                    waiter.failure = f"the broker did not take the write: {err.str()}"
                    waiter.event.set()
                    self._replace_if_fatal(producer, err)

            try:
                producer.produce(self._topic, key=command.id.encode(), value=raw, on_delivery=delivered)
            except (BufferError, KafkaException) as err:
                self._metrics.produce_errors.labels(reason="command").inc()
                if isinstance(err, KafkaException) and err.args and isinstance(err.args[0], KafkaError):
                    self._replace_if_fatal(producer, err.args[0])
                raise Unavailable(f"the broker cannot take writes now: {err}") from err
            if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
                self._metrics.produce_errors.labels(reason="no_reply").inc()
                raise Unavailable("the writer did not answer in time; the outcome of the write is unknown")
        finally:
            self._listener.forget(command.id)
        if waiter.failure is not None or waiter.reply is None:
            self._metrics.produce_errors.labels(reason="command").inc()
            raise Unavailable(waiter.failure or "no reply")
        reply = waiter.reply
        replied = time.perf_counter()
        self._reply_wait.observe(replied - started)
        if reply.status == 503:
            raise Unavailable((reply.error or {}).get("message", "the writer could not apply the write"))
        if reply.offsets and not self._materializer.wait_applied(reply.offsets, max(0.0, deadline - time.monotonic())):
            self._metrics.produce_errors.labels(reason="apply_timeout").inc()
            raise Unavailable("the write is committed but this replica's store did not apply it in time")
        self._store_wait.observe(time.perf_counter() - replied)
        return reply

    def close(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._poller.join(timeout)
        self._producer.flush(timeout)
