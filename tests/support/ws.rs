//! WebSocket helpers for tunnel tests: does a message still echo, and is the
//! tunnel closed under the caller within a limit.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const LIMIT: Duration = Duration::from_secs(10);

/// A message goes through and comes back.
pub async fn echoes<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) -> bool {
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(LIMIT, ws.next()).await, Ok(Some(Ok(m))) if m == Message::text(text))
}

/// Wait (at most `limit`) until the tunnel is closed under the caller; how long it took.
pub async fn closed_within<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let closed = async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(limit, closed).await.ok().map(|()| start.elapsed())
}
