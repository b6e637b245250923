//! A broker-side KIP-227 fetch-session layer, for a broker that has none.
//!
//! tansu 0.6.0 answers every Fetch with session_id 0, so a client that asks
//! for incremental fetch sessions (kafka-python, Java) never gets one from
//! it, and the proxy's handling of incremental Fetch responses would go
//! untested against a real broker. This layer is that broker's session
//! cache, written after Apache Kafka's `FetchManager` and `FetchSession`
//! (core/src/main/scala/kafka/server/FetchSession.scala; the reference doc's
//! section 4.2):
//!
//! ```text
//! client → idemgate → FetchSessions (this) → tansu
//!
//! every frame        forwarded byte for byte, answered one at a time per
//!                    connection (a broker mutes a connection until it answered)
//! Fetch, epoch -1    sessionless: forwarded byte for byte (librdkafka's only kind)
//! Fetch, epoch 0     full: closes the session named, if any; tansu gets a
//!                    sessionless fetch of the request's partitions; the answer
//!                    names a new session (epoch 1) holding every partition answered
//! Fetch, epoch n>0   incremental: unknown id → FETCH_SESSION_ID_NOT_FOUND,
//!                    epoch ≠ the session's → INVALID_FETCH_SESSION_EPOCH (no
//!                    partitions, session_id 0); else the request's partitions are
//!                    added or updated, forgotten ones removed, tansu gets a
//!                    sessionless fetch of every partition in the session, and the
//!                    answer holds only partitions with records, a changed high
//!                    watermark or log start offset, an error, a preferred read
//!                    replica or a diverging epoch (`maybeUpdateResponseData`);
//!                    those move to the end of the session (Kafka's rotation).
//!                    A session emptied by its forgotten partitions is closed and
//!                    the fetch answered sessionless.
//! ```
//!
//! A test can make a partition fail ([`FetchSessions::fail`]): tansu has
//! no partition errors to give on demand.
//!
//! Sessions live in one cache shared by every connection, as on a broker: a
//! client may continue its session over a new connection. What happened is
//! counted in [`Counts`], so a test can tell real sessions were used.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use idemgate::codec::RequestHead;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::net::{TcpListener, TcpStream};

use super::fake_broker::FakeBroker;
use super::frames::{read_frame, write_frame};

/// Kafka's FETCH_SESSION_ID_NOT_FOUND.
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// Kafka's INVALID_FETCH_SESSION_EPOCH.
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

/// The first Fetch version with sessions.
const FIRST_SESSION_VERSION: i16 = 7;

/// What the layer did with the Fetches it saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Full fetches (epoch 0) answered with a new session.
    pub created: u64,
    /// Incremental fetches answered in their session.
    pub incremental: u64,
    /// Session partitions left out of incremental answers (nothing new for them).
    pub omitted: u64,
    /// Incremental answers that carried a partition with an error.
    pub partition_errors: u64,
    /// Incremental fetches that forgot the session's last partition (session closed).
    pub closed: u64,
    /// Sessionless fetches (epoch -1, or before v7): passed through.
    pub sessionless: u64,
    /// Incremental fetches naming a session the cache does not hold.
    pub id_not_found: u64,
    /// Incremental fetches with an epoch other than the session's.
    pub invalid_epoch: u64,
    /// Requests other than Fetch, forwarded untouched.
    pub other: u64,
}

impl Counts {
    /// Every fetch the layer refused with a session error.
    pub fn session_errors(&self) -> u64 {
        self.id_not_found + self.invalid_epoch
    }
}

/// The layer: listening, and forwarding to its upstream broker.
pub struct FetchSessions {
    pub addr: String,
    shared: Arc<Shared>,
    _broker: FakeBroker,
}

struct Shared {
    upstream: String,
    /// The session cache, by session id. Never held across an await.
    sessions: Mutex<HashMap<i32, Session>>,
    counts: Mutex<Counts>,
    /// Hands out session ids: a hash of a counter, so ids look random (as
    /// Kafka's do) and a client cannot guess a sequence.
    ids: AtomicU64,
    hasher: RandomState,
    /// Every Fetch answer the layer built itself (sessions only), in order,
    /// when a test asked for them.
    answers: Mutex<Option<Vec<(i16, FetchResponse)>>>,
    /// Partitions to answer with an error in session fetches: tansu
    /// answers even a partition that does not exist without one, and a
    /// partition error is what an incremental answer must always carry.
    faults: Mutex<HashMap<PartitionKey, i16>>,
}

/// One fetch session: its epoch and its partitions, in Kafka's order.
struct Session {
    /// The epoch the next incremental request must carry.
    epoch: i32,
    partitions: Vec<Cached>,
}

/// A partition of a session (Kafka's `CachedPartition`).
struct Cached {
    key: PartitionKey,
    /// The topic as the request named it (name below v13, id from v13),
    /// without partitions: the template for the fetches sent upstream.
    topic: FetchTopic,
    /// The request's partition data as last sent (offset, max bytes, epochs).
    request: FetchPartition,
    /// The high watermark last answered; -1 after an error, so the
    /// partition is answered again once the error is gone.
    high_watermark: i64,
    /// The log start offset last answered.
    log_start_offset: i64,
}

/// A partition: topic name (Fetch v7-12) or topic id (v13+), and index.
type PartitionKey = (TopicName, [u8; 16], i32);

fn key_of(name: &TopicName, id: &[u8; 16], partition: i32) -> PartitionKey {
    (name.clone(), *id, partition)
}

/// What a Fetch turned into.
enum Route {
    /// Forwarded and answered byte for byte.
    Untouched,
    /// Answered here with a session error.
    Refused(i16),
    /// `request` goes upstream; its answer becomes what `reply` says.
    Upstream {
        request: Box<FetchRequest>,
        reply: Reply,
    },
}

enum Reply {
    /// A full fetch: the answer opens a session of the partitions it holds.
    NewSession(Box<FetchRequest>),
    /// An incremental fetch in session `id`, which moved to `epoch`.
    Incremental { id: i32, epoch: i32 },
    /// The session was closed: the answer goes out sessionless.
    Sessionless,
}

impl FetchSessions {
    /// Listens on 127.0.0.1:`port` and forwards to `upstream`. The port is
    /// chosen by the caller so the broker can advertise it before it starts.
    pub async fn start(port: u16, upstream: &str) -> FetchSessions {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the fetch-session layer");
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            sessions: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
            ids: AtomicU64::new(0),
            hasher: RandomState::new(),
            answers: Mutex::new(None),
            faults: Mutex::new(HashMap::new()),
        });
        let broker = FakeBroker::serve(listener, {
            let shared = shared.clone();
            move |client| serve(shared.clone(), client)
        });
        FetchSessions {
            addr: broker.addr.clone(),
            shared,
            _broker: broker,
        }
    }

    pub fn counts(&self) -> Counts {
        *self.shared.counts.lock().unwrap()
    }

    /// From now on, keeps every Fetch answer the layer builds.
    pub fn record_answers(&self) {
        *self.shared.answers.lock().unwrap() = Some(Vec::new());
    }

    /// Answers `partition` of `topic` (named as the fetches name it: by
    /// name up to v12, by id from v13) with `error_code` in every session
    /// fetch from now on, as Kafka answers a partition in error: no records,
    /// watermarks and log start offset -1. Error code 0 lifts the fault.
    pub fn fail(&self, topic: &FetchTopic, partition: i32, error_code: i16) {
        let key = key_of(&topic.topic, topic.topic_id.as_bytes(), partition);
        let mut faults = self.shared.faults.lock().unwrap();
        if error_code == 0 {
            faults.remove(&key);
        } else {
            faults.insert(key, error_code);
        }
    }

    /// The answers kept since [`record_answers`](Self::record_answers): (version, response).
    pub fn answers(&self) -> Vec<(i16, FetchResponse)> {
        self.shared
            .answers
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default()
    }
}

// === impl Shared ===

impl Shared {
    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap());
    }

    fn new_session_id(&self, sessions: &HashMap<i32, Session>) -> i32 {
        loop {
            let n = self.ids.fetch_add(1, Ordering::Relaxed);
            let id = (self.hasher.hash_one(n) as i32) & i32::MAX;
            if id != 0 && !sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// Kafka's `FetchManager.newContext`: what a Fetch request becomes.
    fn route(&self, version: i16, body: &[u8]) -> Route {
        if version < FIRST_SESSION_VERSION {
            self.count(|c| c.sessionless += 1);
            return Route::Untouched;
        }
        let Ok(mut req) = FetchRequest::decode(&mut Bytes::copy_from_slice(body), version) else {
            self.count(|c| c.sessionless += 1);
            return Route::Untouched;
        };
        let (id, epoch) = (req.session_id, req.session_epoch);
        let mut sessions = self.sessions.lock().unwrap();
        if epoch == 0 || epoch == -1 {
            // A full fetch closes the session it names.
            if id != 0 {
                sessions.remove(&id);
            }
            if epoch == -1 {
                self.count(|c| c.sessionless += 1);
                return Route::Untouched;
            }
            let upstream = sessionless(req.clone(), None);
            return Route::Upstream {
                request: Box::new(upstream),
                reply: Reply::NewSession(Box::new(req)),
            };
        }
        let Some(session) = sessions.get_mut(&id) else {
            self.count(|c| c.id_not_found += 1);
            return Route::Refused(FETCH_SESSION_ID_NOT_FOUND);
        };
        if session.epoch != epoch {
            self.count(|c| c.invalid_epoch += 1);
            return Route::Refused(INVALID_FETCH_SESSION_EPOCH);
        }
        session.update(&req);
        if session.partitions.is_empty() {
            sessions.remove(&id);
            self.count(|c| c.closed += 1);
            req.forgotten_topics_data.clear();
            return Route::Upstream {
                request: Box::new(sessionless(req, None)),
                reply: Reply::Sessionless,
            };
        }
        session.epoch = next_epoch(session.epoch);
        Route::Upstream {
            request: Box::new(sessionless(req, Some(&session.partitions))),
            reply: Reply::Incremental {
                id,
                epoch: session.epoch,
            },
        }
    }

    /// The answer to a Fetch that went upstream (Kafka's
    /// `updateAndGenerateResponseData`).
    fn reply(&self, reply: Reply, mut resp: FetchResponse) -> FetchResponse {
        if resp.error_code != 0 {
            return resp;
        }
        self.inject_faults(&mut resp);
        let mut sessions = self.sessions.lock().unwrap();
        match reply {
            Reply::Sessionless => resp.session_id = 0,
            Reply::NewSession(req) => {
                let mut partitions = Vec::new();
                for topic in &resp.responses {
                    for p in &topic.partitions {
                        let key =
                            key_of(&topic.topic, topic.topic_id.as_bytes(), p.partition_index);
                        let Some((t, request)) = find_request(&req, &key) else {
                            continue;
                        };
                        partitions.push(Cached {
                            key,
                            topic: t.clone().with_partitions(Vec::new()),
                            request: request.clone(),
                            high_watermark: p.high_watermark,
                            log_start_offset: p.log_start_offset,
                        });
                    }
                }
                let id = self.new_session_id(&sessions);
                sessions.insert(
                    id,
                    Session {
                        epoch: next_epoch(0),
                        partitions,
                    },
                );
                resp.session_id = id;
                self.count(|c| c.created += 1);
            }
            Reply::Incremental { id, epoch } => {
                let Some(session) = sessions.get_mut(&id).filter(|s| s.epoch == epoch) else {
                    // Another request moved the session on meanwhile (Kafka:
                    // "Possible duplicate request").
                    self.count(|c| c.invalid_epoch += 1);
                    return FetchResponse::default()
                        .with_error_code(INVALID_FETCH_SESSION_EPOCH)
                        .with_session_id(id);
                };
                let mut kept = 0;
                let mut errors = false;
                for topic in &mut resp.responses {
                    let (name, topic_id) = (topic.topic.clone(), *topic.topic_id.as_bytes());
                    topic.partitions.retain(|p| {
                        let respond =
                            session.respond(&key_of(&name, &topic_id, p.partition_index), p);
                        kept += u64::from(respond);
                        errors |= respond && p.error_code != 0;
                        respond
                    });
                }
                resp.responses.retain(|t| !t.partitions.is_empty());
                resp.session_id = id;
                let omitted = session.partitions.len() as u64 - kept;
                self.count(|c| {
                    c.incremental += 1;
                    c.omitted += omitted;
                    c.partition_errors += u64::from(errors);
                });
            }
        }
        resp
    }

    fn inject_faults(&self, resp: &mut FetchResponse) {
        let faults = self.faults.lock().unwrap();
        for topic in &mut resp.responses {
            for p in &mut topic.partitions {
                let key = key_of(&topic.topic, topic.topic_id.as_bytes(), p.partition_index);
                if let Some(&error_code) = faults.get(&key) {
                    *p = PartitionData::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error_code)
                        .with_high_watermark(-1)
                        .with_aborted_transactions(None);
                }
            }
        }
    }

    fn record(&self, version: i16, resp: &FetchResponse) {
        if let Some(answers) = self.answers.lock().unwrap().as_mut() {
            answers.push((version, resp.clone()));
        }
    }
}

// === impl Session ===

impl Session {
    /// Kafka's `FetchSession.update`: partitions sent are added or updated,
    /// forgotten ones removed.
    fn update(&mut self, req: &FetchRequest) {
        for topic in &req.topics {
            for p in &topic.partitions {
                let key = key_of(&topic.topic, topic.topic_id.as_bytes(), p.partition);
                match self.partitions.iter_mut().find(|c| c.key == key) {
                    Some(cached) => cached.request = p.clone(),
                    None => self.partitions.push(Cached {
                        key,
                        topic: topic.clone().with_partitions(Vec::new()),
                        request: p.clone(),
                        high_watermark: -1,
                        log_start_offset: -1,
                    }),
                }
            }
        }
        for topic in &req.forgotten_topics_data {
            for &p in &topic.partitions {
                let key = key_of(&topic.topic, topic.topic_id.as_bytes(), p);
                self.partitions.retain(|c| c.key != key);
            }
        }
    }

    /// Kafka's `CachedPartition.maybeUpdateResponseData`, plus the rotation
    /// of `IncrementalFetchContext`: whether the partition goes into the
    /// answer; if so it moves to the end of the session.
    fn respond(&mut self, key: &PartitionKey, p: &PartitionData) -> bool {
        let Some(at) = self.partitions.iter().position(|c| &c.key == key) else {
            return false;
        };
        let cached = &mut self.partitions[at];
        let mut respond = p.records.as_ref().is_some_and(|r| !r.is_empty());
        if cached.high_watermark != p.high_watermark {
            cached.high_watermark = p.high_watermark;
            respond = true;
        }
        if cached.log_start_offset != p.log_start_offset {
            cached.log_start_offset = p.log_start_offset;
            respond = true;
        }
        if p.preferred_read_replica.0 >= 0 || p.diverging_epoch.epoch >= 0 {
            respond = true;
        }
        if p.error_code != 0 {
            cached.high_watermark = -1;
            respond = true;
        }
        if respond {
            let cached = self.partitions.remove(at);
            self.partitions.push(cached);
        }
        respond
    }
}

/// Kafka's `FetchMetadata.nextEpoch`.
fn next_epoch(epoch: i32) -> i32 {
    match epoch {
        e if e < 0 => -1,
        i32::MAX => 1,
        e => e + 1,
    }
}

/// `req` as a sessionless fetch (session 0, epoch -1, nothing forgotten),
/// of `partitions` if given (the whole session), else of its own. Runs of
/// partitions of one topic make one topic entry, as Kafka builds them.
fn sessionless(mut req: FetchRequest, partitions: Option<&[Cached]>) -> FetchRequest {
    let topics = match partitions {
        None => std::mem::take(&mut req.topics),
        Some(partitions) => {
            let mut topics: Vec<FetchTopic> = Vec::new();
            for c in partitions {
                match topics.last_mut() {
                    Some(t) if t.topic == c.topic.topic && t.topic_id == c.topic.topic_id => {
                        t.partitions.push(c.request.clone())
                    }
                    _ => topics.push(c.topic.clone().with_partitions(vec![c.request.clone()])),
                }
            }
            topics
        }
    };
    req.with_session_id(0)
        .with_session_epoch(-1)
        .with_forgotten_topics_data(Vec::new())
        .with_topics(topics)
}

fn find_request<'a>(
    req: &'a FetchRequest,
    key: &PartitionKey,
) -> Option<(&'a FetchTopic, &'a FetchPartition)> {
    req.topics.iter().find_map(|t| {
        t.partitions
            .iter()
            .find(|p| key_of(&t.topic, t.topic_id.as_bytes(), p.partition) == *key)
            .map(|p| (t, p))
    })
}

// === the connection ===

/// One client connection: requests answered in order, one at a time.
async fn serve(shared: Arc<Shared>, mut client: TcpStream) {
    let Ok(mut upstream) = TcpStream::connect(&shared.upstream).await else {
        return;
    };
    while let Some(frame) = read_frame(&mut client).await {
        let Some(answer) = handle(&shared, &mut upstream, frame).await else {
            return;
        };
        if let Some(answer) = answer {
            if write_frame(&mut client, &answer).await.is_err() {
                return;
            }
        }
    }
}

/// One request: `None` when the upstream connection broke, `Some(None)`
/// when the request has no answer (Produce acks=0).
async fn handle(shared: &Shared, upstream: &mut TcpStream, frame: Bytes) -> Option<Option<Bytes>> {
    let head = match RequestHead::peek(&frame) {
        Ok(head) if head.api_key == ApiKey::Fetch => head,
        other => {
            shared.count(|c| c.other += 1);
            let answered = match other {
                Ok(h) if h.api_key == ApiKey::Produce => {
                    idemgate::message::produce_acks_and_timeout(
                        &frame,
                        h.body_offset,
                        h.api_version,
                    )
                    .is_none_or(|(acks, _)| acks != 0)
                }
                _ => true,
            };
            write_frame(upstream, &frame).await.ok()?;
            return if answered {
                Some(Some(read_frame(upstream).await?))
            } else {
                Some(None)
            };
        }
    };
    let version = head.api_version;
    let response_header = ApiKey::Fetch.response_header_version(version);
    match shared.route(version, &frame[head.body_offset..]) {
        Route::Untouched => {
            write_frame(upstream, &frame).await.ok()?;
            Some(Some(read_frame(upstream).await?))
        }
        Route::Refused(error_code) => {
            let resp = FetchResponse::default().with_error_code(error_code);
            shared.record(version, &resp);
            let header = ResponseHeader::default().with_correlation_id(head.correlation_id);
            Some(Some(encode(&header, response_header, &resp, version)))
        }
        Route::Upstream { request, reply } => {
            let mut out = BytesMut::from(&frame[..head.body_offset]);
            request.encode(&mut out, version).expect("encode a Fetch");
            write_frame(upstream, &out).await.ok()?;
            let mut answer = read_frame(upstream).await?;
            let header = ResponseHeader::decode(&mut answer, response_header)
                .expect("Fetch response header");
            let resp = FetchResponse::decode(&mut answer, version)
                .expect("tansu's Fetch response decodes");
            let resp = shared.reply(reply, resp);
            shared.record(version, &resp);
            Some(Some(encode(&header, response_header, &resp, version)))
        }
    }
}

fn encode(
    header: &ResponseHeader,
    header_version: i16,
    resp: &FetchResponse,
    version: i16,
) -> Bytes {
    let mut out = BytesMut::new();
    header
        .encode(&mut out, header_version)
        .expect("encode a response header");
    resp.encode(&mut out, version)
        .expect("encode a Fetch response");
    out.freeze()
}
