"""faust's aiokafka transport with the consumer's fetch wait taken from `KafkaConfig`.

faust-streaming 0.15 builds its worker consumer with `fetch_max_wait_ms=1500` and offers no
setting for it. Against Tansu, which answers a waiting fetch only when the wait expires, that
puts up to 1.5 s on every interaction. `fetch_wait_transport(ms)` returns a Transport class whose
consumer is built as faust builds it, with that one value replaced before the consumer starts
(aiokafka reads it when `start()` creates its fetcher).
"""

from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka


def fetch_wait_transport(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    if fetch_max_wait_ms < 0:
        raise ValueError(f"fetch_max_wait_ms: must be >= 0, got {fetch_max_wait_ms}")

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            client = super()._create_worker_consumer(transport)
            client._fetch_max_wait_ms = fetch_max_wait_ms  # no public setter; used by start()
            return client

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport
