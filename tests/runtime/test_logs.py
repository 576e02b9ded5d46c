"""Every process logs to stderr as text or as one JSON object per line."""

import json
import logging

import pytest

from runtime import logs


@pytest.fixture()
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in logs.NOISY_LOGGERS})
    yield
    root.handlers[:], level, noisy = saved
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


def test_json_logs_are_one_parseable_object_per_line(capsys, restore_logging):
    logs.configure("json")
    logging.getLogger("model_worker.serve").warning("dead letter from %s: %s", "t[0]@5", 'bad "field"\nnext line')
    logging.getLogger("kafka.conn").info("connected")  # client chatter stays below WARNING
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "WARNING"
    assert record["logger"] == "model_worker.serve"
    assert record["message"] == 'dead letter from t[0]@5: bad "field"\nnext line'
    assert {"time", "process"} <= set(record)


def test_text_logs_name_level_and_logger(capsys, restore_logging):
    logs.configure("text")
    logging.getLogger("streams.app").info("ready")
    assert capsys.readouterr().err.strip().endswith("INFO streams.app: ready")


def test_verbose_shows_client_debug_logs(capsys, restore_logging):
    logs.configure("text", verbose=True)
    logging.getLogger("kafka.conn").debug("connecting")
    assert "kafka.conn: connecting" in capsys.readouterr().err


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format"):
        logs.logging_config("xml")
