//! The API's read pool: store connections opened by [`crate::pg::connect::connect`] (so `sslmode`
//! and errors behave exactly as for the daemon's own store connection), each set read-only with
//! a statement timeout.
//!
//! deadpool's generic managed pool is used rather than deadpool-postgres' manager because the
//! latter builds connections with its own TLS connector, which would bypass pg::connect's `sslmode`
//! rules.

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};

use crate::config::ConnUrl;
use crate::pg::connect::{self, ConnectError};

/// Opens and checks API connections to the store.
#[derive(Debug)]
pub struct StoreConnections {
    url: ConnUrl,
}

impl managed::Manager for StoreConnections {
    type Type = tokio_postgres::Client;
    type Error = ConnectError;

    async fn create(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let client = connect::connect(&self.url, "walpoints-api").await?;
        client
            .batch_execute("SET default_transaction_read_only = on; SET statement_timeout = '10s'")
            .await
            .map_err(|e| ConnectError::of("store (api)", e))?;
        Ok(client)
    }

    async fn recycle(
        &self,
        client: &mut tokio_postgres::Client,
        _: &Metrics,
    ) -> RecycleResult<ConnectError> {
        if client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        Ok(())
    }
}

/// The pool type.
pub type Pool = managed::Pool<StoreConnections>;

/// A pool of at most `size` connections to the store; waiting for one or opening one gives up
/// after a few seconds so a dead store makes requests fail fast.
pub fn pool(url: ConnUrl, size: usize) -> Result<Pool, managed::BuildError> {
    managed::Pool::builder(StoreConnections { url })
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
}
