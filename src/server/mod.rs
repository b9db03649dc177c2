//! Listeners: accept connections, hand them to hyper, drain on shutdown.

pub mod accept;
pub mod idle;
pub mod listener;
pub mod proxy_protocol;
pub mod tls;

pub use listener::serve;
