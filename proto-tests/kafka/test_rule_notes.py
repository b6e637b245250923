"""What the proxy says about a rule that can take a legitimate repeat for a
replay (audit A5): a `key = "content"` drop rule covering a compacted topic
is logged once per topic, from the topic's real `cleanup.policy` on Apache
Kafka 4.4; a delete-policy topic under the same rule is not."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from bed import unique, wait_for

RULE = """
[[dedup.rules]]
topics = "notes-*"
key = "content"
mode = "drop"
"""

WARNING = 'a key = "content" drop rule covers a compacted topic'


def warnings_for(proxy, topic: str) -> int:
    log = proxy.log_path.read_text(errors="replace")
    return sum(1 for line in log.splitlines() if WARNING in line and f'topic="{topic}"' in line)


def test_a_content_drop_rule_on_a_compacted_topic_is_logged_once(kafka, proxies):
    compacted = unique("notes-state")
    plain = unique("notes-events")
    kafka.create_topic(compacted, partitions=1, config={"cleanup.policy": "compact"})
    kafka.create_topic(plain, partitions=1)
    proxy = proxies(kafka.bootstrap, RULE)
    p = Producer({"bootstrap.servers": proxy.bootstrap, "linger.ms": 0})
    for n in range(3):
        for topic in (compacted, plain):
            p.produce(topic, key=b"job", value=f"state-{n}".encode())
        assert p.flush(30) == 0
    wait_for(f"the warning for {compacted}", lambda: warnings_for(proxy, compacted) > 0, 30)
    # The plain topic's cleanup.policy was asked too (the same lookup); give a
    # late warning the time the compacted one took, then count.
    time.sleep(1)
    assert warnings_for(proxy, compacted) == 1, proxy.log_tail()
    assert warnings_for(proxy, plain) == 0, proxy.log_tail()
