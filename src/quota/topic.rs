//! The quota topic (`[quota.shared]`): publishes this process's usage
//! every `report_every` and its admin pauses, and tails the topic for the
//! peers' (see `tier.rs` for what is done with them).
//!
//! One partition (the latest pause state per connector is the last record
//! of its key), `cleanup.policy=compact` with short segments: a usage
//! report is only worth its first `peer_expiry`, so every report shares one
//! key (`u`) and compaction keeps the last; a pause is keyed
//! `pause:<connector>`, a resume is its tombstone. The partition is read
//! from its start at every start (a few minutes of reports at most, then
//! the compacted pauses).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::Record;
use tokio::sync::watch;

use super::tier::Report;
use super::Quotas;
use crate::config::{SharedQuota, Upstream};
use crate::tls::UpstreamTlsConnector;

/// The key every usage report shares.
const USAGE_KEY: &[u8] = b"u";
/// Pause records' keys: this, then the connector label.
const PAUSE_PREFIX: &[u8] = b"pause:";
/// Segments roll this often, so compaction can shorten what a start reads.
const SEGMENT_MS: &str = "600000";

/// What the quota topic works with.
pub(crate) struct Setup {
    pub settings: SharedQuota,
    pub upstream: Upstream,
    pub tls: Option<UpstreamTlsConnector>,
    pub quotas: Arc<Quotas>,
}

/// The task that publishes and tails the quota topic until `shutdown`.
pub(crate) async fn run(setup: Setup, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    // The next offset to read, once one was read this run.
    let mut position: Option<i64> = None;
    loop {
        let attempt = async {
            let client = match connect(&setup).await {
                Ok(client) => client,
                Err(e) => return e,
            };
            setup.quotas.tier.connected.store(true, Relaxed);
            backoff = Duration::from_millis(200);
            serve(&setup, &client, &mut position).await
        };
        let outcome = tokio::select! {
            r = attempt => r,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        setup.quotas.tier.connected.store(false, Relaxed);
        tracing::warn!(topic = %setup.settings.topic, error = %outcome, retry_in = ?backoff,
            "quota topic unreachable; quotas hold per process until it is back");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn connect(setup: &Setup) -> Result<Client, String> {
    let configs = [
        ("cleanup.policy", "compact".to_string()),
        ("segment.ms", SEGMENT_MS.to_string()),
    ];
    let topic = crate::kafka_client::OwnTopic {
        client_id: "idemgate-quota",
        name: &setup.settings.topic,
        partitions: 1,
        replication_factor: setup.settings.replication_factor,
        configs: &configs,
    };
    crate::kafka_client::connect(
        &setup.upstream,
        setup.tls.as_ref(),
        setup.settings.sasl.as_ref(),
        &topic,
    )
    .await
}

/// Publishes and tails until an error (returned).
async fn serve(setup: &Setup, client: &Client, position: &mut Option<i64>) -> String {
    let partition =
        || client.partition_client(setup.settings.topic.clone(), 0, UnknownTopicHandling::Retry);
    let (producer, tail) = match (partition().await, partition().await) {
        (Ok(p), Ok(t)) => (p, t),
        (Err(e), _) | (_, Err(e)) => return e.to_string(),
    };
    let quotas = &setup.quotas;
    let every = setup.settings.report_every;
    // The first report a whole interval after the baseline below.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Usage while the topic was away is never published: charged late and
    // at once, it would throttle the whole tier for the length of the
    // outage. The first report covers from here.
    quotas.report(Instant::now(), chrono::Utc::now().timestamp_millis());
    // Pauses queued while the topic was away go first.
    quotas.tier.pauses_queued.notify_one();
    let tailing = tail_topic(setup, &tail, position);
    tokio::pin!(tailing);
    loop {
        tokio::select! {
            e = &mut tailing => return e,
            _ = tick.tick() => {
                let report = quotas.report(Instant::now(), chrono::Utc::now().timestamp_millis());
                let value = serde_json::to_vec(&report).expect("a report serializes");
                if let Err(e) = publish(setup, &producer, vec![record(USAGE_KEY.to_vec(), Some(value))]).await {
                    quotas.tier.publish_failures.fetch_add(1, Relaxed);
                    return e;
                }
            }
            _ = quotas.tier.pauses_queued.notified() => {
                let pauses = quotas.tier.take_pauses();
                let records = pauses
                    .iter()
                    .map(|(label, paused)| {
                        let key = [PAUSE_PREFIX, label.as_bytes()].concat();
                        // A resume is the key's tombstone.
                        record(key, paused.then(|| quotas.tier.origin.clone().into_bytes()))
                    })
                    .collect();
                if let Err(e) = publish(setup, &producer, records).await {
                    quotas.tier.publish_failures.fetch_add(1, Relaxed);
                    quotas.tier.requeue(pauses);
                    return e;
                }
            }
        }
    }
}

fn record(key: Vec<u8>, value: Option<Vec<u8>>) -> Record {
    Record {
        key: Some(key),
        value,
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    }
}

async fn publish(
    setup: &Setup,
    producer: &PartitionClient,
    records: Vec<Record>,
) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    let n = records.len() as u64;
    let produce = producer.produce(records, Compression::NoCompression);
    match tokio::time::timeout(setup.upstream.request_timeout, produce).await {
        Ok(Ok(_)) => {
            setup.quotas.tier.published.fetch_add(n, Relaxed);
            Ok(())
        }
        Ok(Err(e)) => Err(format!("publish: {e}")),
        Err(_) => Err("publish timed out".into()),
    }
}

/// Reads the partition from its start (or where this run left it), for
/// ever; returns the error that ended it.
async fn tail_topic(setup: &Setup, client: &PartitionClient, position: &mut Option<i64>) -> String {
    let quotas = &setup.quotas;
    let end = match client.get_offset(OffsetAt::Latest).await {
        Ok(end) => end,
        Err(e) => return e.to_string(),
    };
    let mut offset = match *position {
        Some(at) => at,
        None => match client.get_offset(OffsetAt::Earliest).await {
            Ok(at) => at,
            Err(e) => return e.to_string(),
        },
    };
    loop {
        if offset >= end && !quotas.tier.caught_up.swap(true, Relaxed) {
            tracing::info!(topic = %setup.settings.topic, paused = ?quotas.paused(),
                "quota topic read to its end: the tier's pauses are in force");
        }
        let wait = setup.settings.report_every.as_millis().min(500) as i32;
        let records = match client.fetch_records(offset, 1..1024 * 1024, wait).await {
            Ok((records, _high)) => records,
            Err(e) => {
                if matches!(
                    e,
                    rskafka::client::error::Error::ServerError {
                        protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                        ..
                    }
                ) {
                    // Compacted away meanwhile: from the start again.
                    *position = None;
                }
                return e.to_string();
            }
        };
        for r in records {
            offset = r.offset + 1;
            let Some(key) = r.record.key else { continue };
            if key == USAGE_KEY {
                let Some(value) = r.record.value else {
                    continue;
                };
                match serde_json::from_slice::<Report>(&value) {
                    Ok(report) => {
                        quotas.absorb(
                            &report,
                            Instant::now(),
                            chrono::Utc::now().timestamp_millis(),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, offset = r.offset, "quota topic: a usage report was not understood")
                    }
                }
            } else if let Some(label) = key.strip_prefix(PAUSE_PREFIX) {
                quotas.absorb_pause(&String::from_utf8_lossy(label), r.record.value.is_some());
            }
        }
        *position = Some(offset);
    }
}
