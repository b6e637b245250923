"""The mission, for real: a source task of the real Kafka Connect 4.4 runtime
crashes with its worker and replays on the other worker, through idemgate, to
Apache Kafka 4.4.

Two distributed workers run a FileStreamSource connector (tasks.max=1) that
tails a file a writer keeps appending unique lines to. Offsets are committed
every 10 s, so a SIGKILLed worker's task restarts on the other worker from up
to 10 s back and sends those lines again. The worker running the task is
killed three times (found through GET /connectors/NAME/status), each time
restarted once the task has moved.

Through the proxy with a drop rule, the topic read straight from the broker
holds every line exactly once, in file order, and the proxy counted the
replays it dropped. The same run with the workers pointed straight at the
broker shows the extra copies: the scenario replays, so the first check bites.
"""

from __future__ import annotations

import threading
import time

from bed import BedError, dedup_rule, read_topic, unique, wait_for

KILLS = 3
LINES_PER_SECOND = 50
FLUSH_MS = 10_000


class LineWriter(threading.Thread):
    """Appends `line-<run>-<n>` to a file, LINES_PER_SECOND a second, until stopped;
    then writes the end marker."""

    def __init__(self, path, tag: str):
        super().__init__(daemon=True)
        self.path, self.tag = path, tag
        self.count = 0
        self.halt = threading.Event()

    def line(self, n: int) -> str:
        return f"line-{self.tag}-{n:07d}"

    @property
    def marker(self) -> str:
        return f"end-{self.tag}"

    def run(self):  # noqa: D401 - threading API
        with open(self.path, "a", buffering=1) as f:
            while not self.halt.is_set():
                f.write(self.line(self.count) + "\n")
                self.count += 1
                time.sleep(1 / LINES_PER_SECOND)
            f.write(self.marker + "\n")

    def finish(self) -> list[str]:
        self.halt.set()
        self.join(10)
        return [self.line(n) for n in range(self.count)] + [self.marker]


def crash_and_replay(connect, bootstrap: str, kafka, tmp_path, name: str,
                     worker_bootstrap: dict[int, str] | None = None):
    """Run the scenario with the workers' bootstrap at `bootstrap` (or each
    worker's own, `worker_bootstrap`: sidecars); return the lines the writer
    wrote, the values the topic holds (read from the broker) and the topic."""
    topic = unique("lines")
    kafka.create_topic(topic, partitions=1)
    source = tmp_path / f"{name}.txt"
    source.touch()
    writer = LineWriter(source, name)
    workers = connect(bootstrap, workers=2, flush_ms=FLUSH_MS, rebalance_delay_ms=3000,
                      props={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1500"},
                      worker_bootstrap=worker_bootstrap)
    try:
        workers.create_connector(name, {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "tasks.max": "1",
            "file": str(source),
            "topic": topic,
        })
        wait_for(f"{name}'s task to run", lambda: workers.task_running(name), 60)
        writer.start()
        for kill in range(KILLS):
            # Let the task send lines beyond its last offset commit, then crash it.
            time.sleep(4 + 2 * kill)
            victim = workers.worker_number(workers.task_running(name))
            workers.kill(victim)
            moved = wait_for(f"{name}'s task to move off worker {victim} (kill {kill + 1})",
                             lambda: (w := workers.task_running(name))
                             and workers.worker_number(w) != victim and w, 90)
            print(f"{name}: kill {kill + 1}: worker {victim} killed, task now on {moved}")
            workers.restart(victim)
        time.sleep(2)
        written = writer.finish()
        records = read_topic(kafka.bootstrap, topic,
                             until=lambda recs: any(r.value() == writer.marker.encode() for r in recs),
                             timeout=120)
    except BaseException:
        writer.halt.set()
        print(workers.log_tail())
        raise
    finally:
        workers.stop()
    return written, [r.value().decode() for r in records], topic


def test_connect_source_task_moved_by_worker_crashes_replays_nothing_through_the_proxy(
        kafka, proxies, connect_clusters, tmp_path):
    direct_written, direct_values, _ = crash_and_replay(
        connect_clusters, kafka.bootstrap, kafka, tmp_path, unique("direct"))
    assert set(direct_values) == set(direct_written), "the direct run lost lines"
    extra = len(direct_values) - len(set(direct_values))
    print(f"straight to the broker: {len(direct_written)} lines, {extra} extra copies")
    assert extra > 0, ("three worker crashes straight to the broker left no extra copies: "
                       "the scenario does not replay, so the proxy run would prove nothing")

    proxy = proxies(kafka.bootstrap, '[dedup]\nwindow = "1h"\n' + dedup_rule("lines-*"))
    written, values, topic = crash_and_replay(
        connect_clusters, proxy.bootstrap, kafka, tmp_path, unique("proxied"))
    dropped = proxy.metric_sum("idemgate_duplicates_dropped_total", topic=topic)
    print(f"through idemgate: {len(written)} lines, {len(values)} records, {dropped:.0f} replays dropped")
    missing = sorted(set(written) - set(values))
    assert not missing, f"{len(missing)} lines never reached the topic, e.g. {missing[:5]}"
    copies = len(values) - len(set(values))
    assert copies == 0, f"{copies} extra copies went through the proxy"
    assert values == written, "the topic's lines are not in file order"
    assert dropped > 0, "the proxy dropped no replay: the task never replayed through it"
    proxy.assert_no_leaks()
