"""Kafka Connect's internal topics under names no rule or default knows,
behind idemgate with a `"*"` content drop rule (audit A5, B12).

One distributed Connect 4.4 worker keeps its config, offset and status
topics in `cfg.<tag>`, `off.<tag>` and `st.<tag>` (none of the
`*-configs`/`*-offsets`/`*-status` shapes). A FileStreamSource connector is
paused, resumed and paused again: the configs topic gets two identical
`target-state-<connector>` PAUSED records, which a content key takes for a
replay. The worker is then SIGKILLed and started again: it rebuilds the
connector's target state from the configs topic, so the connector must come
back PAUSED. The proxy must have learned the three topics from the worker's
own clients (`<group.id>-configs`, `-offsets`, `-statuses`), and the
connector's own offsets topic `cx.<tag>` (KIP-618) from its offset-shaped
record keys, and never keyed a record there: no `idemgate_records_total` sample names them, while the
connector's data topic is keyed.

Before the proxy learned internal topics from their writers, the second
PAUSED was dropped and the connector came back RUNNING.
"""

from __future__ import annotations

import json

from bed import read_topic, unique, wait_for

RULE = """
[[dedup.rules]]
topics = "*"
key = "content"
mode = "drop"
"""


def test_internal_topics_with_other_names_are_never_touched(kafka, proxies, connect_clusters,
                                                            tmp_path):
    tag = unique("i").replace("-", "")
    internal = {"config": f"cfg.{tag}", "offset": f"off.{tag}", "status": f"st.{tag}",
                "connector offsets": f"cx.{tag}"}
    data = f"data.{tag}"
    kafka.create_topic(data, partitions=1)
    proxy = proxies(kafka.bootstrap, RULE)
    workers = connect_clusters(proxy.bootstrap, workers=1, flush_ms=1000, props={
        "config.storage.topic": internal["config"],
        "offset.storage.topic": internal["offset"],
        "status.storage.topic": internal["status"],
    })
    name = f"src-{tag}"
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"line-{n}\n" for n in range(20)))
    try:
        workers.create_connector(name, {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "tasks.max": "1",
            "file": str(source),
            "topic": data,
            # KIP-618: the connector's own offsets topic, written (without
            # exactly-once support) by the task's data producer.
            "offsets.storage.topic": internal["connector offsets"],
        })
        wait_for(f"{name}'s task to run", lambda: workers.task_running(name), 90)
        # The offsets topic is written once the task's offsets are committed.
        def committed():
            status, body = workers.rest("GET", f"/connectors/{name}/offsets")
            return status == 200 and body.get("offsets")
        wait_for(f"{name}'s offsets committed", committed, 60)

        def state():
            st = workers.status(name)
            return st and st["connector"]["state"]

        for action, want in [("pause", "PAUSED"), ("resume", "RUNNING"), ("pause", "PAUSED")]:
            status, body = workers.rest("PUT", f"/connectors/{name}/{action}")
            assert status == 202, (action, status, body)
            wait_for(f"{name} {want}", lambda: state() == want, 60)

        workers.kill(1)
        workers.restart(1)
        came_back = wait_for(f"{name}'s state after the restart",
                             lambda: state() in ("PAUSED", "RUNNING") and state(), 120)
        assert came_back == "PAUSED", "the last pause was lost: the connector came back running"
    except BaseException:
        print(workers.log_tail())
        print(proxy.log_tail())
        raise

    # Every target-state record landed, read straight from the broker.
    prefix = f"target-state-{name}".encode()

    def target_states(records):
        return [json.loads(r.value())["state"] for r in records
                if r.key() == prefix and r.value() is not None]

    records = read_topic(kafka.bootstrap, internal["config"],
                         until=lambda recs: target_states(recs).count("PAUSED") >= 2)
    assert target_states(records)[-3:] == ["PAUSED", "STARTED", "PAUSED"], target_states(records)

    # The proxy never keyed a record of the internal topics; it did key the data.
    samples = proxy.metrics()
    for topic in internal.values():
        named = [k for k in samples if f'topic="{topic}"' in k]
        assert not named, f"the proxy keyed {topic}: {named}"
    assert proxy.metric_sum("idemgate_records_total", topic=data) >= 20
    log = proxy.log_path.read_text(errors="replace")
    for topic in internal.values():
        learned = [l for l in log.splitlines()
                   if "a Kafka Connect internal topic" in l and f'topic="{topic}"' in l]
        assert len(learned) == 1, f"{topic} not learned once as internal:\n{proxy.log_tail()}"
