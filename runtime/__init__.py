"""The bottom layer every package stands on; it imports only `schemas`.

  kafka.py     KafkaConfig and the client factories (kafka-python producer/consumer/admin, faust's
               broker credentials), topic creation, reading a topic to its end
  tail.py      TopicTail: a thread that follows a topic from the beginning outside any group
  features.py  ItemFeatures: item id -> vector, fed from the item-embeddings topic (no index)
  metrics.py   WorkerMetrics (Prometheus) and the /metrics, /healthz, /readyz endpoint
  logs.py      stderr logging as text or JSON lines
  cli.py       how a package registers `vip5` subcommands, and the Kafka flags they share
"""
