//! walpoints: a sidecar that turns an exchange's PostgreSQL write-ahead log into loyalty points.

pub mod lsn;
pub mod pgoutput;
pub mod points;
pub mod value;
