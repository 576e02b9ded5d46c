"""Log setup for every `vip5` process: human-readable text or one JSON object per line.

    vip5 --log-format json serve ...        (or VIP5_LOG_FORMAT=json)
    {"time": "2026-11-29T20:31:49", "level": "WARNING", "logger": "model_worker.serve",
     "process": 4711, "message": "dead letter from vip5.rerank-requests[2]@118: ..."}

`logging_config()` is a `logging.config.dictConfig` dictionary, so the faust worker (which sets
up logging itself) takes the same one. Client libraries that log every connection at INFO are
kept at WARNING unless `--verbose`.
"""

from __future__ import annotations

import logging.config

LOG_FORMATS = ("text", "json")
NOISY_LOGGERS = ("kafka", "aiokafka", "httpx", "urllib3", "werkzeug")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def logging_config(fmt: str = "text", *, verbose: bool = False) -> dict:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format: {fmt!r} not in {LOG_FORMATS}")
    formatter = {"format": TEXT_FORMAT} if fmt == "text" else {
        "()": "pythonjsonlogger.json.JsonFormatter", "format": JSON_FIELDS,
        "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}}
    quiet = "DEBUG" if verbose else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "root": {"level": "DEBUG" if verbose else "INFO", "handlers": ["stderr"]},
        "loggers": {name: {"level": quiet} for name in NOISY_LOGGERS},
    }


def configure(fmt: str = "text", *, verbose: bool = False) -> None:
    logging.config.dictConfig(logging_config(fmt, verbose=verbose))
