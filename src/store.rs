//! The persistent store: the only file that touches sled.
//!
//! One sled database under `store.dir`, one tree per concern: the broker
//! topology (node id → proxy port and upstream address, so that a client that
//! cached a broker address before a proxy restart finds the same broker
//! behind the same port afterwards), the idempotency window's segments, and
//! idempotent producers' sequence translation.

use std::path::Path;
use std::time::Duration;

use crate::error::Error;

/// What the store remembers about one upstream broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: i32,
    /// The proxy port clients use for this broker; never changes once given.
    pub port: u16,
    /// The broker's own `host:port`, as its Metadata advertised it.
    pub upstream: String,
}

pub struct Store {
    db: sled::Db,
    topology: sled::Tree,
    /// Window segments by id (big-endian u64, so oldest first).
    segments: sled::Tree,
    /// Sequence translation points of idempotent producers.
    sequences: sled::Tree,
    /// The first write that failed (disk full, read-only, I/O error). sled
    /// refuses every write after one fails, until the process restarts.
    write_failure: std::sync::OnceLock<String>,
    /// Tests: every write fails from now on, as sled's do after a full disk.
    #[cfg(test)]
    refuse_writes: std::sync::atomic::AtomicBool,
}

/// sled's own default: a key acknowledged less than this long before a
/// crash may be forgotten (its replay then passes: a duplicate, never a loss).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// sled's page cache (sled's own default is 1 GiB, which let 10M keys'
/// segments pile up to ~200 MiB beside the window's maps). The window
/// writes each segment once and reads it back at a start or for a
/// replay's answer: little cache is needed, and below ~32 MiB sled holds
/// about as much anyway (docs/performance.md).
pub const DEFAULT_CACHE: usize = 32 << 20;

/// sled wants some cache to work with; `[dedup] store_cache` refuses less.
pub const MIN_CACHE: usize = 1 << 20;

fn store_err(e: sled::Error) -> Error {
    Error::store_caused(e.to_string(), e)
}

impl Store {
    /// Opens with the defaults of `[dedup] flush_interval` (sled's own 500 ms)
    /// and `[dedup] store_cache` ([`DEFAULT_FLUSH_INTERVAL`], [`DEFAULT_CACHE`]).
    pub fn open(dir: &Path) -> Result<Store, Error> {
        Self::open_with(dir, DEFAULT_FLUSH_INTERVAL, DEFAULT_CACHE)
    }

    /// Opens with writes reaching the disk at least every `flush_every`, and
    /// sled's page cache capped at `cache_bytes` (by sled's own count).
    pub fn open_with(
        dir: &Path,
        flush_every: Duration,
        cache_bytes: usize,
    ) -> Result<Store, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::store_caused(format!("cannot create {}: {e}", dir.display()), e))?;
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(cache_bytes.max(MIN_CACHE) as u64)
            .flush_every_ms(Some(flush_every.as_millis().max(1) as u64))
            .open()
            .map_err(|e| Error::store_caused(format!("cannot open {}: {e}", dir.display()), e))?;
        let topology = db
            .open_tree("topology")
            .map_err(|e| Error::store_caused(format!("cannot open the topology tree: {e}"), e))?;
        let segments = db
            .open_tree("window")
            .map_err(|e| Error::store_caused(format!("cannot open the window tree: {e}"), e))?;
        let sequences = db
            .open_tree("sequences")
            .map_err(|e| Error::store_caused(format!("cannot open the sequences tree: {e}"), e))?;
        Ok(Store {
            db,
            topology,
            segments,
            sequences,
            write_failure: std::sync::OnceLock::new(),
            #[cfg(test)]
            refuse_writes: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A failed write, remembered for `/readyz` and `idemgate_store_writable`.
    fn write_err(&self, e: sled::Error) -> Error {
        let message = e.to_string();
        if self.write_failure.set(message.clone()).is_ok() {
            tracing::error!(
                error = %message,
                "the store refused a write: keys are no longer recorded and their replays will pass \
                 (idemgate_dedup_fail_open_total{{reason=\"store_error\"}}); free the space, then restart idemgate"
            );
        }
        Error::store_caused(message, e)
    }

    /// The first write the store refused, if any.
    pub fn write_failure(&self) -> Option<&str> {
        self.write_failure.get().map(String::as_str)
    }

    pub fn put_segment(&self, id: u64, value: &[u8]) -> Result<(), Error> {
        self.refused()?;
        self.segments
            .insert(id.to_be_bytes(), value)
            .map(drop)
            .map_err(|e| self.write_err(e))
    }

    pub fn segment(&self, id: u64) -> Result<Option<sled::IVec>, Error> {
        self.segments.get(id.to_be_bytes()).map_err(store_err)
    }

    /// Tests: from now on every segment write and removal fails, as sled's
    /// do once the disk is full.
    #[cfg(test)]
    pub fn refuse_writes(&self) {
        self.refuse_writes
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(test)]
    fn refused(&self) -> Result<(), Error> {
        if self
            .refuse_writes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let _ = self.write_failure.set("refused (test)".into());
            return Err(Error::store("refused (test)"));
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn refused(&self) -> Result<(), Error> {
        Ok(())
    }

    pub fn remove_segment(&self, id: u64) -> Result<(), Error> {
        self.refused()?;
        self.segments
            .remove(id.to_be_bytes())
            .map(drop)
            .map_err(|e| self.write_err(e))
    }

    /// Segments from the oldest, starting at `from`.
    pub fn segments_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), Error>> {
        self.segments.range(from.to_be_bytes()..).map(|item| {
            let (k, v) = item.map_err(store_err)?;
            let id = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| Error::store("bad window segment id"))?,
            );
            Ok((id, v))
        })
    }

    /// The newest segment id, if any.
    pub fn last_segment_id(&self) -> Result<Option<u64>, Error> {
        Ok(self
            .segments
            .last()
            .map_err(store_err)?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    pub fn sequence_state(&self, key: &[u8]) -> Result<Option<sled::IVec>, Error> {
        self.sequences.get(key).map_err(store_err)
    }

    /// Writes a producer's translation state and waits until it is on disk:
    /// a retry after a crash must find the decision its first attempt got.
    /// If the flush fails, the previous value is put back where sled still
    /// takes writes (once a flush failed it usually refuses them: the
    /// caller keeps its own view, see `Sequences`).
    pub async fn put_sequence_state_durably(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.refused()?;
        let previous = self
            .sequences
            .insert(key, value)
            .map_err(|e| self.write_err(e))?;
        if let Err(e) = self.sequences.flush_async().await {
            let _ = match previous {
                Some(v) => self.sequences.insert(key, v).map(drop),
                None => self.sequences.remove(key).map(drop),
            };
            return Err(self.write_err(e));
        }
        Ok(())
    }

    /// Every producer-partition's translation state.
    pub fn sequence_states(
        &self,
    ) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), Error>> + '_ {
        self.sequences.iter().map(|item| item.map_err(store_err))
    }

    /// Replaces (or with `None` removes) a translation state if it still
    /// holds `old`; false when a writer changed it meanwhile. Flushed by the
    /// store's timer: losing it to a crash only brings it back.
    pub fn replace_sequence_state(
        &self,
        key: &[u8],
        old: &[u8],
        new: Option<&[u8]>,
    ) -> Result<bool, Error> {
        self.refused()?;
        self.sequences
            .compare_and_swap(key, Some(old), new)
            .map(|r| r.is_ok())
            .map_err(|e| self.write_err(e))
    }

    /// Bytes on disk (sled's own estimate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Writes everything to disk now, blocking.
    pub fn flush_now(&self) -> Result<(), Error> {
        self.refused()?;
        self.db.flush().map(drop).map_err(|e| self.write_err(e))
    }

    /// Every broker the proxy has ever given a port, by node id.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        let mut out = Vec::new();
        for item in self.topology.iter() {
            let (k, v) = item.map_err(store_err)?;
            let node_id = i32::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| Error::store("bad topology key"))?,
            );
            if v.len() < 2 {
                return Err(Error::store(format!(
                    "bad topology value for node {node_id}"
                )));
            }
            let port = u16::from_be_bytes([v[0], v[1]]);
            let upstream = String::from_utf8_lossy(&v[2..]).into_owned();
            out.push(NodeRecord {
                node_id,
                port,
                upstream,
            });
        }
        Ok(out)
    }

    /// Records a broker durably: a port handed to a client must survive a crash.
    pub fn save_node(&self, node: &NodeRecord) -> Result<(), Error> {
        let mut value = Vec::with_capacity(2 + node.upstream.len());
        value.extend_from_slice(&node.port.to_be_bytes());
        value.extend_from_slice(node.upstream.as_bytes());
        self.topology
            .insert(node.node_id.to_be_bytes(), value)
            .map_err(|e| self.write_err(e))?;
        self.topology.flush().map_err(|e| self.write_err(e))?;
        Ok(())
    }

    /// Writes everything to disk; called on shutdown.
    pub async fn flush(&self) -> Result<(), Error> {
        self.db.flush_async().await.map_err(|e| self.write_err(e))?;
        Ok(())
    }

    /// For `/readyz`: the database answers a read.
    pub fn is_healthy(&self) -> bool {
        self.topology.first().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_keeps_what_caused_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"").unwrap();
        let err = Store::open(&file.join("store"))
            .err()
            .expect("a file is not a directory");
        assert!(
            err.to_string().starts_with("store: cannot create "),
            "{err}"
        );
        let source = std::error::Error::source(&err).expect("the I/O error kept as the source");
        assert!(
            source.downcast_ref::<std::io::Error>().is_some(),
            "{source:?}"
        );
    }

    #[test]
    fn nodes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeRecord {
            node_id: 111,
            port: 19093,
            upstream: "127.0.0.1:9092".into(),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_node(&node).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.nodes().unwrap(), vec![node]);
        assert!(store.is_healthy());
    }
}
