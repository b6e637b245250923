package dev.idemgate.testclient;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.FeatureMetadata;
import org.apache.kafka.clients.admin.FinalizedVersionRange;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.KafkaShareConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.clients.admin.StreamsGroupDescription;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.logging.log4j.Level;
import org.apache.logging.log4j.core.config.Configurator;

/**
 * The Java test client of idemgate's Apache Kafka test bed: the real
 * kafka-clients 4.4 producer, consumers (classic, KIP-848, KIP-932 share) and
 * admin, with their default settings unless a flag says otherwise.
 *
 * <pre>
 *   produce  --bootstrap B --topic T --count N [--prefix P] [--compression C]
 *            [--transactional-id ID [--abort]] [--marker VALUE] [--pause-ms MS]
 *            [--partitions K]
 *   stream   --bootstrap B --topic T [--partition P] [--transactional-id ID]
 *            [--pause-ms MS] [--client-id C]
 *            (one producer, steered line by line from stdin: see stream())
 *   consume  --bootstrap B --topic T --group G [--group-protocol consumer|classic]
 *            [--isolation read_committed] --until VALUE [--timeout-ms MS]
 *   share    --bootstrap B --topic T --group G --until VALUE [--timeout-ms MS]
 *   metadata --bootstrap B [--topic T] [--group G]
 *   streams  --bootstrap B --input I --output O --application-id A --until VALUE
 *            [--group-protocol streams|classic] [--timeout-ms MS]
 *            (Kafka Streams 4.4: I's values upper-cased into O, until VALUE
 *            has been processed; then the group as Admin describes it)
 *   move-leader --bootstrap B --topic T --partition P --replicas 2,1
 *            (reassigns P to these replicas, then elects the first: an admin
 *            step of the test, run straight against the brokers)
 * </pre>
 *
 * Output on stdout is JSON lines, one event each, flushed as it happens:
 * {"event":"acked",...}, {"event":"record",...}, {"event":"owned",...},
 * {"event":"nodes",...} (every broker address of the client's cluster view)
 * and a final {"event":"done",...}. Any error prints {"event":"error",...}
 * and exits 1. The client's own log goes where -Dkafka.logs.file says
 * (proto-tests/jvm/log4j2.properties); NetworkClient logs at DEBUG so the
 * addresses it connects to and the request versions it sends are on record.
 */
public final class Main {
    private Main() {}

    public static void main(String[] args) {
        Configurator.setLevel("org.apache.kafka.clients.NetworkClient", Level.DEBUG);
        int rc;
        try {
            rc = run(args);
        } catch (Throwable t) {
            emit(obj("event", "error", "error", t.toString(), "cause", String.valueOf(rootCause(t))));
            t.printStackTrace();
            rc = 1;
        }
        System.out.flush();
        System.exit(rc);
    }

    private static int run(String[] args) throws Exception {
        if (args.length == 0) {
            throw new IllegalArgumentException("usage: produce|consume|share|metadata --flags");
        }
        Map<String, String> f = flags(args);
        switch (args[0]) {
            case "produce": return produce(f);
            case "consume": return consume(f);
            case "share": return share(f);
            case "stream": return stream(f);
            case "metadata": return metadata(f);
            case "streams": return streams(f);
            case "move-leader": return moveLeader(f);
            default: throw new IllegalArgumentException("unknown subcommand " + args[0]);
        }
    }

    // ---- produce -------------------------------------------------------------

    private static int produce(Map<String, String> f) throws Exception {
        String topic = need(f, "topic");
        int count = Integer.parseInt(f.getOrDefault("count", "100"));
        String prefix = f.getOrDefault("prefix", "v");
        long pauseMs = Long.parseLong(f.getOrDefault("pause-ms", "0"));
        String txn = f.get("transactional-id");
        boolean abort = f.containsKey("abort");
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, need(f, "bootstrap"));
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, f.getOrDefault("compression", "none"));
        if (f.containsKey("linger-ms")) {
            p.put(ProducerConfig.LINGER_MS_CONFIG, f.get("linger-ms"));
        }
        if (txn != null) {
            p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txn);
        }
        AtomicInteger acked = new AtomicInteger();
        AtomicReference<Exception> failed = new AtomicReference<>();
        Set<String> nodes = new TreeSet<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            if (txn != null) {
                producer.initTransactions();
                producer.beginTransaction();
            }
            // --partitions K: value i goes to partition i % K and the marker
            // to every partition; otherwise the default partitioner decides.
            int partitions = Integer.parseInt(f.getOrDefault("partitions", "0"));
            List<String> values = new ArrayList<>();
            List<Integer> targets = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                values.add(prefix + "-" + i);
                targets.add(partitions > 0 ? i % partitions : null);
            }
            if (f.containsKey("marker")) {
                for (int part = 0; part < Math.max(partitions, 1); part++) {
                    values.add(f.get("marker"));
                    targets.add(partitions > 0 ? part : null);
                }
            }
            for (int i = 0; i < values.size(); i++) {
                if (failed.get() != null) {
                    break;
                }
                String value = values.get(i);
                producer.send(new ProducerRecord<>(topic, targets.get(i), null, value),
                        answer(value, acked, e -> failed.compareAndSet(null, e)));
                if (pauseMs > 0) {
                    Thread.sleep(pauseMs);
                }
            }
            if (txn != null) {
                if (abort) {
                    // Everything written first: the log holds the aborted records.
                    producer.flush();
                    producer.abortTransaction();
                    emit(obj("event", "aborted", "transactional_id", txn));
                } else {
                    producer.commitTransaction();
                    emit(obj("event", "committed", "transactional_id", txn));
                }
            } else {
                producer.flush();
            }
            for (PartitionInfo pi : producer.partitionsFor(topic)) {
                addNodes(nodes, pi);
            }
        }
        emit(obj("event", "nodes", "nodes", new ArrayList<>(nodes)));
        if (failed.get() != null) {
            throw failed.get();
        }
        emit(obj("event", "done", "acked", acked.get()));
        return 0;
    }

    /** A send's answer: prints acked (and counts it) or send_failed (and hands the error on). */
    private static org.apache.kafka.clients.producer.Callback answer(
            String value, AtomicInteger acked, java.util.function.Consumer<Exception> onFailure) {
        return (md, e) -> {
            if (e != null) {
                onFailure.accept(e);
                emit(obj("event", "send_failed", "value", value, "error", e.toString()));
            } else {
                acked.incrementAndGet();
                emit(obj("event", "acked", "value", value, "partition", md.partition(),
                        "offset", md.offset()));
            }
        };
    }

    // ---- stream: one producer, steered from stdin ---------------------------

    /**
     * One producer that lives while the test steers it, so the test can act
     * between its steps (kill a proxy, move the client) and the same producer
     * (same producer id, epoch and sequences) goes on. Commands, one a line:
     * <pre>
     *   send VALUE   sends VALUE to T, partition P (0 unless --partition);
     *                its answer prints acked or send_failed
     *   flush        waits for the answer to every send so far; prints flushed
     *   begin | commit | abort   (with --transactional-id) prints begun,
     *                committed or aborted
     * </pre>
     * Unlike produce, a failed send or step does not end the run: it prints
     * send_failed or step_failed (with the exception) and the next command
     * goes on, so the test counts every failure. At the end of input: flush,
     * close, {"event":"done","acked":N,"failed":M}; exit 0 unless the client
     * could not be built or closed. The client's log records every producer
     * id and epoch it takes (TransactionManager at DEBUG): an idempotent
     * producer answered OUT_OF_ORDER_SEQUENCE_NUMBER retries under a bumped
     * epoch without failing a send (KIP-360), and the log is where that shows.
     */
    private static int stream(Map<String, String> f) throws Exception {
        Configurator.setLevel("org.apache.kafka.clients.producer.internals.TransactionManager", Level.DEBUG);
        String topic = need(f, "topic");
        int partition = Integer.parseInt(f.getOrDefault("partition", "0"));
        long pauseMs = Long.parseLong(f.getOrDefault("pause-ms", "0"));
        String txn = f.get("transactional-id");
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, need(f, "bootstrap"));
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        if (f.containsKey("client-id")) {
            p.put(ProducerConfig.CLIENT_ID_CONFIG, f.get("client-id"));
        }
        if (txn != null) {
            p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txn);
        }
        AtomicInteger acked = new AtomicInteger();
        AtomicInteger failed = new AtomicInteger();
        java.io.BufferedReader in = new java.io.BufferedReader(
                new java.io.InputStreamReader(System.in, java.nio.charset.StandardCharsets.UTF_8));
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            if (txn != null) {
                producer.initTransactions();
            }
            emit(obj("event", "ready"));
            String line;
            while ((line = in.readLine()) != null) {
                String cmd = line.strip();
                if (cmd.isEmpty()) {
                    continue;
                }
                try {
                    if (cmd.startsWith("send ")) {
                        String value = cmd.substring(5);
                        producer.send(new ProducerRecord<>(topic, partition, null, value),
                                answer(value, acked, e -> failed.incrementAndGet()));
                        if (pauseMs > 0) {
                            Thread.sleep(pauseMs);
                        }
                    } else if (cmd.equals("flush")) {
                        producer.flush();
                        emit(obj("event", "flushed", "acked", acked.get(), "failed", failed.get()));
                    } else if (cmd.equals("begin")) {
                        producer.beginTransaction();
                        emit(obj("event", "begun"));
                    } else if (cmd.equals("commit")) {
                        producer.commitTransaction();
                        emit(obj("event", "committed"));
                    } else if (cmd.equals("abort")) {
                        producer.abortTransaction();
                        emit(obj("event", "aborted"));
                    } else {
                        throw new IllegalArgumentException("unknown command: " + cmd);
                    }
                } catch (Exception e) {
                    failed.incrementAndGet();
                    emit(obj("event", "step_failed", "command", cmd, "error", e.toString()));
                }
            }
            producer.flush();
        }
        emit(obj("event", "done", "acked", acked.get(), "failed", failed.get()));
        return 0;
    }

    // ---- streams (Kafka Streams, KIP-1071 or classic) --------------------------

    private static int streams(Map<String, String> f) throws Exception {
        String input = need(f, "input");
        String output = need(f, "output");
        String appId = need(f, "application-id");
        String until = need(f, "until").toUpperCase(java.util.Locale.ROOT);
        long timeoutMs = Long.parseLong(f.getOrDefault("timeout-ms", "120000"));
        Properties p = new Properties();
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, need(f, "bootstrap"));
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.GROUP_PROTOCOL_CONFIG, f.getOrDefault("group-protocol", "streams"));
        p.put(StreamsConfig.STATE_DIR_CONFIG,
                java.nio.file.Files.createTempDirectory("idemgate-streams").toString());
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        StreamsBuilder builder = new StreamsBuilder();
        java.util.concurrent.CountDownLatch ended = new java.util.concurrent.CountDownLatch(1);
        AtomicInteger processed = new AtomicInteger();
        builder.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
                .mapValues(v -> v.toUpperCase(java.util.Locale.ROOT))
                .peek((k, v) -> {
                    processed.incrementAndGet();
                    if (v.equals(until)) {
                        ended.countDown();
                    }
                })
                .to(output, Produced.with(Serdes.String(), Serdes.String()));
        AtomicReference<Throwable> failed = new AtomicReference<>();
        try (KafkaStreams streams = new KafkaStreams(builder.build(), p)) {
            streams.setUncaughtExceptionHandler(e -> {
                failed.compareAndSet(null, e);
                ended.countDown();
                return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                        .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
            });
            streams.start();
            if (!ended.await(timeoutMs, TimeUnit.MILLISECONDS)) {
                throw new IllegalStateException("no " + until + " within " + timeoutMs
                        + " ms; " + processed.get() + " processed, state " + streams.state());
            }
            if (failed.get() != null) {
                throw new IllegalStateException("a stream thread failed", failed.get());
            }
            emit(obj("event", "processed", "records", processed.get(),
                    "state", streams.state().toString()));
            Properties a = new Properties();
            a.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, need(f, "bootstrap"));
            try (Admin admin = Admin.create(a)) {
                StreamsGroupDescription g = admin.describeStreamsGroups(List.of(appId))
                        .all().get(30, TimeUnit.SECONDS).get(appId);
                Node c = g.coordinator();
                emit(obj("event", "group", "group", g.groupId(),
                        "state", String.valueOf(g.groupState()),
                        "members", g.members().size(),
                        "coordinator", c.host() + ":" + c.port()));
            } catch (ExecutionException e) {
                // A classic-protocol application has no streams group.
                emit(obj("event", "group", "group", appId, "error", rootCause(e).toString()));
            }
            streams.close(Duration.ofSeconds(30));
        }
        emit(obj("event", "done", "processed", processed.get()));
        return 0;
    }

    // ---- consume (classic or KIP-848) ----------------------------------------

    private static int consume(Map<String, String> f) throws Exception {
        String topic = need(f, "topic");
        String until = need(f, "until");
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(
                Long.parseLong(f.getOrDefault("timeout-ms", "120000")));
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, need(f, "bootstrap"));
        p.put(ConsumerConfig.GROUP_ID_CONFIG, need(f, "group"));
        p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, f.getOrDefault("group-protocol", "consumer"));
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, f.getOrDefault("isolation", "read_uncommitted"));
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        if (f.containsKey("client-id")) {
            p.put(ConsumerConfig.CLIENT_ID_CONFIG, f.get("client-id"));
        }
        Set<String> nodes = new TreeSet<>();
        int seen = 0;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            consumer.subscribe(List.of(topic));
            Set<Integer> owned = new TreeSet<>();
            // The end: every partition this member owns has shown it `until`
            // (a marker per partition); one member alone owns all of them.
            Set<Integer> ended = new HashSet<>();
            while (true) {
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("timed out before every owned partition showed "
                            + until + " (owned " + owned + ", ended " + ended + ", " + seen + " records)");
                }
                ConsumerRecords<String, String> recs = consumer.poll(Duration.ofMillis(200));
                for (ConsumerRecord<String, String> r : recs) {
                    seen++;
                    if (until.equals(r.value())) {
                        ended.add(r.partition());
                    }
                    emit(obj("event", "record", "value", r.value(), "partition", r.partition(),
                            "offset", r.offset()));
                }
                Set<Integer> now = new TreeSet<>();
                for (TopicPartition tp : consumer.assignment()) {
                    now.add(tp.partition());
                }
                if (!now.equals(owned)) {
                    owned = now;
                    emit(obj("event", "owned", "partitions", new ArrayList<>(owned)));
                }
                if (!owned.isEmpty() && ended.containsAll(owned)) {
                    break;
                }
            }
            consumer.commitSync();
            for (PartitionInfo pi : consumer.partitionsFor(topic)) {
                addNodes(nodes, pi);
            }
        }
        emit(obj("event", "nodes", "nodes", new ArrayList<>(nodes)));
        emit(obj("event", "done", "records", seen));
        return 0;
    }

    // ---- share (KIP-932) -----------------------------------------------------

    private static int share(Map<String, String> f) throws Exception {
        String topic = need(f, "topic");
        String group = need(f, "group");
        String until = need(f, "until");
        String bootstrap = need(f, "bootstrap");
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(
                Long.parseLong(f.getOrDefault("timeout-ms", "120000")));
        // A share group starts at the latest offset unless its group config
        // says otherwise: read from the start, like the other consumers here.
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            ConfigResource res = new ConfigResource(ConfigResource.Type.GROUP, group);
            admin.incrementalAlterConfigs(Map.of(res, List.of(new AlterConfigOp(
                    new ConfigEntry("share.auto.offset.reset", "earliest"), AlterConfigOp.OpType.SET))))
                    .all().get(30, TimeUnit.SECONDS);
        }
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        int seen = 0;
        try (KafkaShareConsumer<String, String> consumer = new KafkaShareConsumer<>(p)) {
            consumer.subscribe(List.of(topic));
            boolean done = false;
            while (!done) {
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("timed out before " + until + " (" + seen + " records)");
                }
                ConsumerRecords<String, String> recs = consumer.poll(Duration.ofMillis(200));
                for (ConsumerRecord<String, String> r : recs) {
                    seen++;
                    if (until.equals(r.value())) {
                        done = true;
                    }
                    emit(obj("event", "record", "value", r.value(), "partition", r.partition(),
                            "offset", r.offset(), "delivery_count", r.deliveryCount().orElse((short) -1)));
                }
            }
            // Acknowledge (implicitly: ACCEPT) what the last poll returned.
            consumer.commitSync(Duration.ofSeconds(30)).forEach((tip, err) -> {
                if (err.isPresent()) {
                    throw new IllegalStateException("acknowledging " + tip + ": " + err.get());
                }
            });
        }
        emit(obj("event", "done", "records", seen));
        return 0;
    }

    // ---- metadata: every broker address of the client's cluster view ---------

    private static int metadata(Map<String, String> f) throws Exception {
        Set<String> nodes = new TreeSet<>();
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, need(f, "bootstrap")))) {
            DescribeClusterResult dc = admin.describeCluster();
            for (Node n : dc.nodes().get(30, TimeUnit.SECONDS)) {
                addNode(nodes, n);
            }
            addNode(nodes, dc.controller().get(30, TimeUnit.SECONDS));
            if (f.containsKey("topic")) {
                TopicDescription td = admin.describeTopics(List.of(f.get("topic")))
                        .allTopicNames().get(30, TimeUnit.SECONDS).get(f.get("topic"));
                for (TopicPartitionInfo tpi : td.partitions()) {
                    addNode(nodes, tpi.leader());
                    tpi.replicas().forEach(n -> addNode(nodes, n));
                    tpi.isr().forEach(n -> addNode(nodes, n));
                }
            }
            if (f.containsKey("group")) {
                addNode(nodes, admin.describeConsumerGroups(List.of(f.get("group")))
                        .all().get(30, TimeUnit.SECONDS).get(f.get("group")).coordinator());
            }
            FeatureMetadata fm = admin.describeFeatures().featureMetadata().get(30, TimeUnit.SECONDS);
            Map<String, Object> features = new LinkedHashMap<>();
            for (Map.Entry<String, FinalizedVersionRange> e : fm.finalizedFeatures().entrySet()) {
                features.put(e.getKey(), (int) e.getValue().maxVersionLevel());
            }
            emit(obj("event", "features", "finalized", features));
        }
        emit(obj("event", "nodes", "nodes", new ArrayList<>(nodes)));
        emit(obj("event", "done"));
        return 0;
    }

    // ---- move-leader: a partition's leadership moves, its old leader stays up --

    private static int moveLeader(Map<String, String> f) throws Exception {
        TopicPartition tp = new TopicPartition(need(f, "topic"), Integer.parseInt(need(f, "partition")));
        List<Integer> replicas = new ArrayList<>();
        for (String r : need(f, "replicas").split(",")) {
            replicas.add(Integer.parseInt(r.trim()));
        }
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, need(f, "bootstrap")))) {
            admin.alterPartitionReassignments(Map.of(tp, java.util.Optional.of(
                    new org.apache.kafka.clients.admin.NewPartitionReassignment(replicas))))
                    .all().get(30, TimeUnit.SECONDS);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (!admin.listPartitionReassignments(Set.of(tp)).reassignments()
                    .get(30, TimeUnit.SECONDS).isEmpty()) {
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("reassignment of " + tp + " not done in 60 s");
                }
                Thread.sleep(200);
            }
            while (true) {
                try {
                    admin.electLeaders(org.apache.kafka.common.ElectionType.PREFERRED, Set.of(tp))
                            .all().get(30, TimeUnit.SECONDS);
                    break;
                } catch (ExecutionException e) {
                    if (e.getCause() instanceof org.apache.kafka.common.errors.ElectionNotNeededException) {
                        break;
                    }
                    if (System.nanoTime() > deadline) {
                        throw e;
                    }
                    Thread.sleep(200);
                }
            }
            Node leader = admin.describeTopics(List.of(tp.topic())).allTopicNames()
                    .get(30, TimeUnit.SECONDS).get(tp.topic()).partitions().get(tp.partition()).leader();
            emit(obj("event", "leader", "partition", tp.partition(), "leader", leader.id()));
        }
        emit(obj("event", "done"));
        return 0;
    }

    // ---- helpers ---------------------------------------------------------------

    private static void addNodes(Set<String> nodes, PartitionInfo pi) {
        addNode(nodes, pi.leader());
        if (pi.replicas() != null) {
            for (Node n : pi.replicas()) {
                addNode(nodes, n);
            }
        }
    }

    private static void addNode(Set<String> nodes, Node n) {
        if (n != null && !n.isEmpty()) {
            nodes.add(n.host() + ":" + n.port());
        }
    }

    private static Throwable rootCause(Throwable t) {
        while (t.getCause() != null && t.getCause() != t) {
            t = t.getCause();
        }
        return t;
    }

    private static Map<String, String> flags(String[] args) {
        Map<String, String> out = new HashMap<>();
        for (int i = 1; i < args.length; i++) {
            String a = args[i];
            if (!a.startsWith("--")) {
                throw new IllegalArgumentException("expected a --flag, got " + a);
            }
            String k = a.substring(2);
            if (i + 1 < args.length && !args[i + 1].startsWith("--")) {
                out.put(k, args[++i]);
            } else {
                out.put(k, "true");
            }
        }
        return out;
    }

    private static String need(Map<String, String> f, String k) {
        String v = f.get(k);
        if (v == null) {
            throw new IllegalArgumentException("--" + k + " is required");
        }
        return v;
    }

    private static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put((String) kv[i], kv[i + 1]);
        }
        return m;
    }

    private static synchronized void emit(Map<String, Object> m) {
        StringBuilder sb = new StringBuilder();
        json(sb, m);
        System.out.println(sb);
        System.out.flush();
    }

    private static void json(StringBuilder sb, Object o) {
        if (o == null) {
            sb.append("null");
        } else if (o instanceof Number || o instanceof Boolean) {
            sb.append(o);
        } else if (o instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) o).entrySet()) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                json(sb, String.valueOf(e.getKey()));
                sb.append(':');
                json(sb, e.getValue());
            }
            sb.append('}');
        } else if (o instanceof Collection) {
            sb.append('[');
            boolean first = true;
            for (Object e : (Collection<?>) o) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                json(sb, e);
            }
            sb.append(']');
        } else {
            String s = o.toString();
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                if (c == '"' || c == '\\') {
                    sb.append('\\').append(c);
                } else if (c < 0x20) {
                    sb.append(String.format("\\u%04x", (int) c));
                } else {
                    sb.append(c);
                }
            }
            sb.append('"');
        }
    }
}
