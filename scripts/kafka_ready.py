"""Exit 0 once the broker at argv[1] answers Metadata naming argv[2] brokers.

scripts/kafka polls this while a cluster starts: a KRaft broker lists only the
brokers that registered and were unfenced, so a full list means the cluster
serves.
"""
import sys

from confluent_kafka.admin import AdminClient

addr, want = sys.argv[1], int(sys.argv[2])
admin = AdminClient({"bootstrap.servers": addr, "log_level": 0})
md = admin.list_topics(timeout=2)
sys.exit(0 if len(md.brokers) >= want else 1)
