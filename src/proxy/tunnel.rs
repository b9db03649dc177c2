//! Tunnels: upgraded (WebSocket) connections joined to their upstream.
//!
//! A tunnel is a connection like any other: it keeps the connection's slot
//! (its `max_connections` permit and its place in `keygate_connections`)
//! until it ends. It ends when either side closes, after
//! `listen.tunnel_idle_timeout` without a byte either way, at
//! `listen.tunnel_max_lifetime` or when its key expires, whichever comes
//! first, and when a reload takes its credential away ([`Tunnels::close_unless`]).
//! A client holds at most `listen.max_tunnels_per_client` at once.
//!
//! Nothing here runs per byte but a clock read and a relaxed atomic store
//! per read or write: the deadlines are checked when their timer rings.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};

use super::ConnInfo;
use crate::metrics::{Held, Metrics, Name, ReasonLabels};

/// A connection's place under `listen.max_connections` and in
/// `keygate_connections`. The connection holds it (in its [`ConnInfo`]), and
/// so does the tunnel it may become: the place is free when both are gone.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _open: Held,
}

impl Slot {
    /// Hold `permit` and one count of `connections`.
    pub fn new(permit: OwnedSemaphorePermit, connections: &Gauge<i64, std::sync::atomic::AtomicI64>) -> Slot {
        Slot { _permit: permit, _open: Held::new(connections) }
    }
}

/// What a tunnel was opened with; a reload checks it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub client: Name,
    pub proof: Proof,
    pub route: Name,
    /// The caller's certificate subject (mTLS), for clients bound to one.
    pub subject: Option<Vec<(String, String)>>,
}

/// The credential a tunnel was opened with, as a reload checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The SHA-256 digest of the key (never the key).
    Key([u8; 32]),
    /// A verified token: its issuer must stay trusted and its scopes must
    /// still cover the route; `exp` ends the tunnel like a key's expiry.
    Token { issuer: String, exp: i64, scopes: Box<[String]> },
}

/// Why a tunnel ended: the `reason` label of `keygate_tunnels_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A side closed or failed.
    Closed,
    Idle,
    Lifetime,
    /// A reload took the key or the permission away.
    Revoked,
    /// The shutdown grace ended.
    Shutdown,
}

impl End {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle",
            End::Lifetime => "lifetime",
            End::Revoked => "revoked",
            End::Shutdown => "shutdown",
        }
    }
}

/// Asks one tunnel to end, saying why.
#[derive(Debug, Default)]
struct Closer {
    notify: Notify,
    shutdown: AtomicBool,
}

impl Closer {
    fn close(&self, why: End) {
        self.shutdown.store(why == End::Shutdown, Ordering::Release);
        // notify_one keeps the wake-up if the tunnel is not waiting yet.
        self.notify.notify_one();
    }

    fn why(&self) -> End {
        match self.shutdown.load(Ordering::Acquire) {
            true => End::Shutdown,
            false => End::Revoked,
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, (Credential, Arc<Closer>)>,
    per_client: HashMap<Name, usize>,
}

/// The open tunnels, by client. Locked when a tunnel opens or ends and on
/// reload, never while bytes flow.
#[derive(Debug)]
pub struct Tunnels {
    registry: Mutex<Registry>,
    open: Gauge<i64, std::sync::atomic::AtomicI64>,
    closed: Family<ReasonLabels, Counter>,
}

impl Tunnels {
    /// No tunnels yet; counted in `metrics`.
    pub fn new(metrics: &Metrics) -> Tunnels {
        Tunnels { registry: Mutex::default(), open: metrics.tunnels.clone(), closed: metrics.tunnels_closed.clone() }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry stays consistent between statements: a panic elsewhere cannot break it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Register a tunnel for `credential`, unless its client has `max` open already.
    pub fn open(self: &Arc<Self>, credential: Credential, max: usize) -> Option<Ticket> {
        let mut r = self.registry();
        let count = r.per_client.entry(credential.client.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        r.next += 1;
        let id = r.next;
        let closer = Arc::new(Closer::default());
        let (client, route) = (credential.client.clone(), credential.route.clone());
        r.open.insert(id, (credential, closer.clone()));
        Some(Ticket { id, client, route, closer, tunnels: self.clone(), _open: Held::new(&self.open) })
    }

    /// Close every tunnel whose credential `allowed` refuses; how many.
    pub fn close_unless(&self, allowed: impl Fn(&Credential) -> bool) -> usize {
        self.close_where(|c| !allowed(c), End::Revoked)
    }

    /// Close every tunnel (the shutdown grace is over); how many.
    pub fn close_all(&self) -> usize {
        self.close_where(|_| true, End::Shutdown)
    }

    fn close_where(&self, close: impl Fn(&Credential) -> bool, why: End) -> usize {
        let r = self.registry();
        let mut n = 0;
        for (credential, closer) in r.open.values() {
            if close(credential) {
                closer.close(why);
                n += 1;
            }
        }
        n
    }

    /// How many tunnels are open.
    pub fn len(&self) -> usize {
        self.registry().open.len()
    }

    /// Whether no tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, id: u64, client: &Name) {
        let mut r = self.registry();
        r.open.remove(&id);
        if let Some(count) = r.per_client.get_mut(client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                r.per_client.remove(client);
            }
        }
    }
}

/// A registered tunnel; dropping it unregisters the tunnel.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    client: Name,
    route: Name,
    closer: Arc<Closer>,
    tunnels: Arc<Tunnels>,
    _open: Held,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.tunnels.release(self.id, &self.client);
    }
}

/// A tunnel waiting for the upstream's answer: the caller's side of the
/// upgrade, its ticket, its deadlines and its connection's slot.
#[derive(Debug)]
pub struct Tunnel {
    client: OnUpgrade,
    ticket: Ticket,
    idle: Duration,
    ends_at: Instant,
    /// Keeps the connection's [`Slot`] for the tunnel's life.
    _conn: Arc<ConnInfo>,
}

impl Tunnel {
    /// A tunnel over `client`'s upgrade, idle for at most `idle`, ending after
    /// `lifetime` or at `expires` (the key's expiry, Unix seconds).
    pub fn new(
        client: OnUpgrade,
        ticket: Ticket,
        (idle, lifetime): (Duration, Duration),
        expires: Option<i64>,
        conn: Arc<ConnInfo>,
    ) -> Tunnel {
        let now = Instant::now();
        let mut ends_at = now + lifetime;
        if let Some(left) = expires.map(|e| e.saturating_sub(crate::keys::unix_now())) {
            ends_at = ends_at.min(now + Duration::from_secs(u64::try_from(left).unwrap_or(0)));
        }
        Tunnel { client, ticket, idle, ends_at, _conn: conn }
    }

    /// Join the caller to the upstream once both upgrades complete, until the tunnel ends.
    pub async fn run(self, upstream: OnUpgrade) {
        let (Ok(client), Ok(upstream)) = (self.client.await, upstream.await) else {
            return;
        };
        let started = Instant::now();
        let closer = self.ticket.closer.clone();
        let closed = pin!(closer.notify.notified());
        let end = pump(TokioIo::new(client), TokioIo::new(upstream), self.idle, self.ends_at, closed).await;
        let end = match end {
            End::Revoked => closer.why(),
            other => other,
        };
        self.ticket.tunnels.closed.get_or_create(&ReasonLabels { reason: end.reason() }).inc();
        let (client, route, seconds) = (&self.ticket.client.0, &self.ticket.route.0, started.elapsed().as_secs());
        match end {
            End::Closed => tracing::debug!(%client, %route, seconds, "tunnel closed"),
            _ => tracing::info!(%client, %route, seconds, reason = end.reason(), "tunnel closed by keygate"),
        }
    }
}

/// When bytes last passed through a tunnel, and whether a side was shut.
struct Seen {
    start: Instant,
    /// Milliseconds from `start` to the last byte.
    last: AtomicU64,
    shut: AtomicBool,
}

impl Seen {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// Copy both ways between `a` and `b` until a side closes, nothing passes
/// for `idle`, `ends_at` comes or `closed` fires.
async fn pump<A, B>(a: A, b: B, idle: Duration, ends_at: Instant, mut closed: Pin<&mut impl Future>) -> End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let seen = Seen { start: Instant::now(), last: AtomicU64::new(0), shut: AtomicBool::new(false) };
    let mut a = Watched { io: a, seen: &seen };
    let mut b = Watched { io: b, seen: &seen };
    let mut copy = pin!(tokio::io::copy_bidirectional(&mut a, &mut b));
    let mut idle_alarm = pin!(tokio::time::sleep_until(seen.start + idle));
    let mut lifetime = pin!(tokio::time::sleep_until(ends_at));
    poll_fn(|cx| {
        if closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Revoked);
        }
        if lifetime.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Lifetime);
        }
        // One direction done (its data flushed, the other side shut) ends
        // the tunnel, as nginx does: WebSocket closes in-band, and a
        // half-closed tunnel would otherwise linger until its idle end.
        if copy.as_mut().poll(cx).is_ready() || seen.shut.load(Ordering::Relaxed) {
            return Poll::Ready(End::Closed);
        }
        poll_idle(idle_alarm.as_mut(), &seen, idle, cx).map(|()| End::Idle)
    })
    .await
}

/// Ready once nothing has passed for `idle`; the alarm rings at most once
/// per `idle` and is moved on to the last byte's deadline.
fn poll_idle(mut alarm: Pin<&mut Sleep>, seen: &Seen, idle: Duration, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        ready!(alarm.as_mut().poll(cx));
        let due = seen.last() + idle;
        if due <= Instant::now() {
            return Poll::Ready(());
        }
        alarm.as_mut().reset(due);
    }
}

/// One side of a tunnel, noting bytes and shutdowns in [`Seen`].
struct Watched<'a, I> {
    io: I,
    seen: &'a Seen,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<'_, I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.seen.touch();
        }
        Poll::Ready(read)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<'_, I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            self.seen.touch();
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
        self.seen.shut.store(true, Ordering::Relaxed);
        Poll::Ready(shut)
    }
}

#[cfg(test)]
mod tests {
    //! Real (short) time: the deadlines are what is under test.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const IDLE: Duration = Duration::from_millis(200);
    const LONG: Duration = Duration::from_secs(30);

    /// A tunnel between two duplex pipes; the test holds the far ends.
    fn pipes() -> ((DuplexStream, DuplexStream), (DuplexStream, DuplexStream)) {
        let (a, a_far) = tokio::io::duplex(1024);
        let (b, b_far) = tokio::io::duplex(1024);
        ((a, a_far), (b, b_far))
    }

    fn around(elapsed: Duration, want: Duration) -> bool {
        elapsed >= want && elapsed < want + Duration::from_millis(150)
    }

    #[tokio::test]
    async fn silent_tunnel_ends_at_the_idle_timeout() {
        let ((a, _a_far), (b, _b_far)) = pipes();
        let start = Instant::now();
        let end = pump(a, b, IDLE, start + LONG, pin!(std::future::pending::<()>())).await;
        assert_eq!(end, End::Idle);
        assert!(around(start.elapsed(), IDLE), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn bytes_either_way_move_the_idle_end() {
        let ((a, mut a_far), (b, mut b_far)) = pipes();
        let start = Instant::now();
        let talk = async move {
            // Client to upstream, then upstream to client, for twice the idle timeout.
            for i in 0..8u8 {
                tokio::time::sleep(IDLE / 4).await;
                let (from, to) = if i % 2 == 0 { (&mut a_far, &mut b_far) } else { (&mut b_far, &mut a_far) };
                from.write_all(&[i]).await.unwrap();
                assert_eq!(to.read_u8().await.unwrap(), i);
            }
            (a_far, b_far)
        };
        let never = pin!(std::future::pending::<()>());
        let (end, _far) = tokio::join!(pump(a, b, IDLE, start + LONG, never), talk);
        assert_eq!(end, End::Idle);
        assert!(around(start.elapsed(), IDLE * 3), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn busy_tunnel_ends_at_its_lifetime() {
        let ((a, mut a_far), (b, mut b_far)) = pipes();
        let start = Instant::now();
        let lifetime = IDLE * 2;
        let talk = async move {
            while a_far.write_all(b"x").await.is_ok() && b_far.read_u8().await.is_ok() {
                tokio::time::sleep(IDLE / 10).await;
            }
        };
        let never = pin!(std::future::pending::<()>());
        let (end, ()) = tokio::join!(pump(a, b, IDLE, start + lifetime, never), talk);
        assert_eq!(end, End::Lifetime);
        assert!(around(start.elapsed(), lifetime), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_closer_ends_the_tunnel_even_before_it_waits() {
        let ((a, _a_far), (b, _b_far)) = pipes();
        let closer = Closer::default();
        closer.close(End::Revoked);
        let start = Instant::now();
        let end = pump(a, b, LONG, start + LONG, pin!(closer.notify.notified())).await;
        assert_eq!((end, closer.why()), (End::Revoked, End::Revoked));
        assert!(start.elapsed() < IDLE);
        closer.close(End::Shutdown);
        assert_eq!(closer.why(), End::Shutdown);
    }

    #[tokio::test]
    async fn one_side_closing_ends_the_tunnel_after_its_last_bytes() {
        for upstream_closes in [false, true] {
            let ((a, mut a_far), (b, mut b_far)) = pipes();
            let (closing, other) = if upstream_closes { (&mut b_far, &mut a_far) } else { (&mut a_far, &mut b_far) };
            closing.write_all(b"bye").await.unwrap();
            closing.shutdown().await.unwrap();
            let start = Instant::now();
            let end = pump(a, b, LONG, start + LONG, pin!(std::future::pending::<()>())).await;
            assert_eq!(end, End::Closed);
            let mut got = Vec::new();
            other.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye", "upstream closes: {upstream_closes}");
        }
    }

    fn credential(client: &str, route: &str) -> Credential {
        Credential {
            client: Name::new(client),
            proof: Proof::Key([client.len() as u8; 32]),
            route: Name::new(route),
            subject: None,
        }
    }

    #[test]
    fn each_client_has_its_own_cap_and_a_dropped_ticket_gives_its_place_back() {
        let metrics = Metrics::new();
        let tunnels = Arc::new(Tunnels::new(&metrics));
        let a1 = tunnels.open(credential("alice", "chat"), 2).unwrap();
        let _a2 = tunnels.open(credential("alice", "chat"), 2).unwrap();
        assert!(tunnels.open(credential("alice", "other"), 2).is_none(), "the cap is per client, over all routes");
        let _b1 = tunnels.open(credential("bob", "chat"), 2).unwrap();
        assert_eq!((tunnels.len(), metrics.tunnels.get()), (3, 3));
        drop(a1);
        assert_eq!((tunnels.len(), metrics.tunnels.get()), (2, 2));
        assert!(tunnels.open(credential("alice", "chat"), 2).is_some());
    }

    #[tokio::test]
    async fn close_unless_closes_only_what_the_check_refuses() {
        let metrics = Metrics::new();
        let tunnels = Arc::new(Tunnels::new(&metrics));
        let alice = tunnels.open(credential("alice", "chat"), 9).unwrap();
        let bob = tunnels.open(credential("bob", "chat"), 9).unwrap();
        assert_eq!(tunnels.close_unless(|c| &*c.client.0 != "alice"), 1);
        let closed = |t: &Ticket| {
            let notified = t.closer.notify.notified();
            futures_util::FutureExt::now_or_never(notified).is_some()
        };
        assert!(closed(&alice));
        assert!(!closed(&bob));
        assert_eq!(tunnels.close_all(), 2);
        assert_eq!((alice.closer.why(), bob.closer.why()), (End::Shutdown, End::Shutdown));
    }
}
