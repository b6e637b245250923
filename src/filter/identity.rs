//! Identity: who the client is (connector and task, from its client id and
//! `quota.connector_patterns`), remembered on the connection for the
//! filters after it. The quota filter names it on a connection's first
//! request; a connection that filter did not name is named from its client
//! id here.

use super::state::ConnState;
use super::{Call, Exchange, Filter};
use crate::identity::Identity;

/// The identity filter of one connection.
#[derive(Clone)]
pub struct Identify<'a> {
    state: &'a tokio::sync::Mutex<ConnState>,
}

impl<'a> Identify<'a> {
    pub fn new(state: &'a tokio::sync::Mutex<ConnState>) -> Self {
        Identify { state }
    }
}

impl<'a> Filter<'a> for Identify<'a> {
    const NAME: &'static str = "identity";

    fn call(
        &self,
        mut ex: Exchange,
        next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a,
    ) -> Call<'a> {
        let state = self.state;
        Box::pin(async move {
            {
                let mut state = state.lock().await;
                if let Some(identity) = ex.identity.take() {
                    state.set_identity(identity);
                } else if state.identity().is_none() {
                    state.set_identity(Identity::from_client_id(&ex.head.client_id_str()));
                }
            }
            next(ex).await
        })
    }
}
