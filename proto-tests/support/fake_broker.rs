//! The byte-level peer the scripted broker (scripted_peer.rs), the
//! fetch-session layer ([`super::fetch_sessions`]) and the fault relay
//! (faults.rs) are built on: a loopback listener whose every connection is
//! served by the peer's own handler, speaking whole frames
//! ([`super::frames::read_frame`], [`super::frames::write_frame`]), stopped
//! when dropped.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct FakeBroker {
    /// `127.0.0.1:<port>`, where it listens.
    pub addr: String,
    accept: JoinHandle<()>,
}

impl FakeBroker {
    /// Serves every connection `listener` accepts with `serve`, each in a
    /// task of its own.
    pub fn serve<F, Fut>(listener: TcpListener, serve: F) -> FakeBroker
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let port = listener.local_addr().expect("a bound listener").port();
        let accept = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                tokio::spawn(serve(connection));
            }
        });
        FakeBroker {
            addr: format!("127.0.0.1:{port}"),
            accept,
        }
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
