//! The TLS handshake, run in the connection's own task under a timeout.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Failed(#[from] std::io::Error),
}

/// Complete the handshake on `tcp` within `timeout`.
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let acceptor = TlsAcceptor::from(config);
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => Err(HandshakeError::Timeout),
        Ok(result) => Ok(result?),
    }
}

/// The verified client certificate's subject, if the peer sent one.
pub fn peer_subject(stream: &TlsStream<TcpStream>) -> Option<Vec<(String, String)>> {
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates()?.first()?;
    Some(crate::tls::subject_of(leaf))
}
