"""The streams worker's faust consumer fetches with KafkaConfig's wait, not faust's fixed 1.5 s."""

import asyncio

import faust
import pytest

from streams.transport import fetch_wait_transport


def test_faust_consumer_uses_the_configured_fetch_wait(tmp_path):
    async def build():
        app = faust.App("fetch-wait-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path), web_enabled=False)
        app.transport = fetch_wait_transport(7)(app.conf.broker_consumer, app)
        thread = app.consumer._new_consumer_thread()
        return thread._create_worker_consumer(app.transport)

    client = asyncio.run(build())
    assert client._fetch_max_wait_ms == 7


def test_negative_fetch_wait_is_refused():
    with pytest.raises(ValueError, match="fetch_max_wait_ms"):
        fetch_wait_transport(-1)
