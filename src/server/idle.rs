//! Connection deadlines that hyper cannot express on its own.
//!
//! hyper's HTTP/1 `header_read_timeout` starts whenever it waits for a request
//! head, so it would also close every idle keep-alive connection after the
//! (short) header timeout, and HTTP/2 has no header deadline at all. Instead,
//! the connection's IO is wrapped and knows three phases:
//!
//! - **head**: from accept, or from the first byte after an idle spell, until
//!   a request reaches the service: `header_read_timeout` (slowloris);
//! - **busy**: a request is in flight (its body has its own idle timeout, its
//!   upstream call `request_timeout`): no deadline here;
//! - **idle**: no request in flight and nothing received since the last one
//!   finished: `idle_timeout` (keep-alive).
//!
//! When a deadline passes while hyper waits to read, the read fails and hyper
//! closes the connection. Upgraded connections (WebSocket) leave the phases.
//!
//! An idle HTTP/1 connection is also **parked** after `park_after`: the IO
//! raises [`Activity::park_due`], the serving loop asks hyper to close, the
//! IO swallows hyper's shutdown, and the loop takes the socket back and drops
//! hyper's connection with its read and write buffers (16 KiB or more). While
//! parked only the socket and this wrapper stay; the idle deadline still runs
//! ([`IdleIo::poll_parked`]), and the first readable byte hands the socket to
//! a fresh hyper connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

/// Requests begun and finished on one connection, shared by its service and its IO.
#[derive(Debug, Default)]
pub struct Activity {
    begun: AtomicU64,
    finished: AtomicU64,
    upgraded: AtomicBool,
    /// The connection's reader, parked while busy: without a header timeout
    /// hyper does not read again after a response until the socket wakes
    /// it, so the idle clock would never be looked at.
    reader: AtomicWaker,
    /// Idle for `park_after`: time to take the socket back from hyper.
    park_due: AtomicBool,
    /// Response bodies whose last frame the connection has not taken on yet
    /// (HTTP/2 waits for the caller's flow-control window; HTTP/1 for room
    /// in its write buffer).
    waiting: AtomicU64,
    /// Frames taken on after such a wait: the caller's progress.
    taken: AtomicU64,
}

impl Activity {
    /// Mark a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.begun.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// The connection was upgraded: the phases no longer apply.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// The connection has been idle for `park_after` and should be parked.
    pub fn park_due(&self) -> bool {
        self.park_due.load(Ordering::Acquire)
    }
}

/// One request in flight; dropping it finishes the request.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// The connection was upgraded: the phases no longer apply.
    pub fn upgraded(&self) {
        self.0.upgraded();
    }

    /// The first frame to wait gets the connection's reader to look: over
    /// HTTP/2 nothing else would wake it while the caller's window is shut.
    fn wait_for_caller(&self) {
        if self.0.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            self.0.reader.wake();
        }
    }

    fn taken_on(&self) {
        self.0.taken.fetch_add(1, Ordering::AcqRel);
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        self.0.reader.wake();
    }
}

/// A response body that keeps its request in flight until it is dropped,
/// and tells the connection while a frame it gave waits for the caller.
pub struct Tracked<B> {
    inner: B,
    in_flight: InFlight,
    /// A frame was given and the next one not asked for yet.
    waiting: bool,
}

impl<B> Tracked<B> {
    /// Keep `in_flight` alive for as long as `inner`.
    pub fn new(inner: B, in_flight: InFlight) -> Tracked<B> {
        Tracked { inner, in_flight, waiting: false }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if self.waiting {
            self.in_flight.taken_on();
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if std::mem::take(&mut this.waiting) {
            this.in_flight.taken_on();
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) && !this.inner.is_end_stream() {
            this.waiting = true;
            this.in_flight.wait_for_caller();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Busy,
    Idle,
    Upgraded,
}

/// The connection's deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `header_read_timeout`: from the first byte to a complete request head.
    pub head: Duration,
    /// `idle_timeout`: no request in flight, nothing received.
    pub idle: Duration,
    /// Idle this long, an HTTP/1 connection gives hyper's buffers back;
    /// `None` never parks (HTTP/2). A park time past the idle end is not used.
    pub park_after: Option<Duration>,
    /// `send_timeout`: a write (or flush) the caller takes no byte of for
    /// this long fails, and hyper closes the connection.
    pub send: Duration,
}

/// A socket that tells when it has something to read: the parked wait.
pub trait ReadReady {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for TlsStream<TcpStream> {
    /// rustls holds no plaintext here: hyper read until the socket blocked.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

impl<T: ReadReady> ReadReady for Box<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

/// The connection's IO under the head and idle deadlines.
pub struct IdleIo<I> {
    inner: I,
    activity: Arc<Activity>,
    phase: Phase,
    finished_seen: u64,
    /// When the current phase's deadline passes (head end, park time or
    /// idle end); meaningless while busy or upgraded.
    due: Instant,
    /// The alarm that gets `due` looked at: never later than `due`, but it
    /// may ring early. Deadlines move later on every request (each finish
    /// restarts the idle clock, each head its own), so moving the alarm
    /// only when a deadline comes earlier keeps the timer wheel out of the
    /// per-request path; an early ring costs one look and one re-arm.
    alarm: Pin<Box<Sleep>>,
    timeouts: Timeouts,
    /// In the idle phase, the deadline is the park time (not yet the idle end).
    park_armed: bool,
    /// When the idle phase began: the idle end is this plus `idle_timeout`.
    idle_since: Instant,
    /// Bytes read before hyper took over (protocol sniffing, a parked
    /// hyper connection's leftovers), served before the socket's.
    rewound: Bytes,
    /// Since the last write that made progress, every write has waited.
    write_stalled: bool,
    /// Rings `send_timeout` after a write first waited; made at the first
    /// stall, so connections whose caller keeps up never allocate it.
    write_alarm: Option<Pin<Box<Sleep>>>,
    /// Busy with a response frame waiting for the caller: `due` is
    /// `send_timeout` after the caller last took one.
    caller_watched: bool,
    taken_seen: u64,
}

impl<I> IdleIo<I> {
    /// Wrap a fresh connection: it starts in the head phase.
    pub fn new(inner: I, activity: Arc<Activity>, timeouts: Timeouts) -> IdleIo<I> {
        let now = Instant::now();
        let due = now + timeouts.head;
        IdleIo {
            inner,
            activity,
            phase: Phase::Head,
            finished_seen: 0,
            due,
            alarm: Box::pin(tokio::time::sleep_until(due)),
            timeouts,
            park_armed: false,
            idle_since: now,
            rewound: Bytes::new(),
            write_stalled: false,
            write_alarm: None,
            caller_watched: false,
            taken_seen: 0,
        }
    }

    /// Serve `bytes` to the next reads, before anything from the socket.
    pub fn rewind(&mut self, bytes: Bytes) {
        debug_assert!(self.rewound.is_empty(), "rewound twice");
        self.rewound = bytes;
    }

    /// HTTP/2: one hyper connection for the connection's life, never parked.
    pub fn never_park(&mut self) {
        self.timeouts.park_after = None;
    }

    /// The socket is back from a parked hyper connection.
    pub fn unpark(&mut self, leftover: Bytes) {
        self.activity.park_due.store(false, Ordering::Release);
        if !leftover.is_empty() {
            self.rewind(leftover);
        }
    }

    fn enter_head(&mut self) {
        self.phase = Phase::Head;
        self.park_armed = false;
        self.set_due(Instant::now() + self.timeouts.head);
    }

    /// Make `due` the deadline; the alarm moves only if it would ring late.
    fn set_due(&mut self, due: Instant) {
        self.due = due;
        if due < self.alarm.deadline() {
            self.alarm.as_mut().reset(due);
        }
    }

    fn enter_idle(&mut self) {
        let now = Instant::now();
        self.phase = Phase::Idle;
        self.idle_since = now;
        self.arm_park(now);
    }

    /// In the idle phase: the deadline is the park time when parking is on
    /// and it comes before the idle end, else the idle end.
    fn arm_park(&mut self, now: Instant) {
        let end = self.idle_since + self.timeouts.idle;
        match self.timeouts.park_after.map(|park| now + park) {
            Some(park) if park < end => {
                self.park_armed = true;
                self.set_due(park);
            }
            _ => {
                self.park_armed = false;
                self.set_due(end);
            }
        }
    }

    /// Poll the head or idle deadline; a passed park time raises
    /// [`Activity::park_due`] and moves the deadline on to the idle end.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.alarm.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() < self.due {
                // Rang early: the deadline moved on since it was set.
                let due = self.due;
                self.alarm.as_mut().reset(due);
                continue;
            }
            if !self.park_armed {
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, timeout_message(self.phase)));
            }
            self.park_armed = false;
            self.activity.park_due.store(true, Ordering::Release);
            let end = self.idle_since + self.timeouts.idle;
            self.set_due(end);
        }
    }

    /// Follow the service: busy while a request is in flight, idle once the
    /// last one finished (each finish restarts the idle clock).
    fn follow_requests(&mut self) {
        if self.phase == Phase::Upgraded {
            return;
        }
        if self.activity.upgraded.load(Ordering::Acquire) {
            self.phase = Phase::Upgraded;
            return;
        }
        let finished = self.activity.finished.load(Ordering::Acquire);
        let begun = self.activity.begun.load(Ordering::Acquire);
        if begun != finished {
            self.phase = Phase::Busy;
        } else if finished != self.finished_seen || self.phase == Phase::Busy {
            self.enter_idle();
        }
        self.finished_seen = finished;
    }

    /// Busy: whether a response frame waits for the caller (an HTTP/2
    /// caller that opens no flow-control window never stalls a write). The
    /// deadline then is `send_timeout` after the caller last took a frame.
    fn watch_caller(&mut self) -> bool {
        if self.activity.waiting.load(Ordering::Acquire) == 0 {
            self.caller_watched = false;
            return false;
        }
        let taken = self.activity.taken.load(Ordering::Acquire);
        if !self.caller_watched || taken != self.taken_seen {
            self.caller_watched = true;
            self.taken_seen = taken;
            self.park_armed = false;
            self.set_due(Instant::now() + self.timeouts.send);
        }
        true
    }
}

impl<I: ReadReady> IdleIo<I> {
    /// While parked: ready with `Ok` once there is something to read,
    /// with the idle timeout's error once the idle deadline passes.
    /// On waking, parking is armed again: readiness can be spurious, and a
    /// connection woken for nothing parks again rather than keep buffers
    /// until its idle end.
    pub fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ready = match self.inner.poll_read_ready(cx) {
            Poll::Pending if self.rewound.is_empty() => return self.poll_deadline(cx).map(Err),
            Poll::Pending => Ok(()),
            Poll::Ready(ready) => ready,
        };
        if self.phase == Phase::Idle {
            self.arm_park(Instant::now());
        }
        Poll::Ready(ready)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.follow_requests();
        let before = buf.filled().len();
        let read = if this.rewound.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.rewound.len().min(buf.remaining());
            buf.put_slice(&this.rewound.split_to(n));
            Poll::Ready(Ok(()))
        };
        match read {
            Poll::Ready(Ok(())) => {
                if this.phase == Phase::Idle && buf.filled().len() > before {
                    this.enter_head();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.phase == Phase::Busy => {
                this.activity.reader.register(cx.waker());
                if this.watch_caller() {
                    return this.poll_deadline(cx).map(Err);
                }
                Poll::Pending
            }
            Poll::Pending if matches!(this.phase, Phase::Head | Phase::Idle) => this.poll_deadline(cx).map(Err),
            other => other,
        }
    }
}

fn timeout_message(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => "idle_timeout: connection idle",
        Phase::Busy => "send_timeout: the caller took no bytes of the response in time",
        _ => "header_read_timeout: request head not received in time",
    }
}

impl<I> IdleIo<I> {
    /// Follow a write's outcome: progress clears the stall; waiting starts
    /// the send deadline (at the first wait) and fails once it passes.
    fn after_write<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_stalled = false;
            return polled;
        }
        if !self.write_stalled {
            self.write_stalled = true;
            let due = Instant::now() + self.timeouts.send;
            match self.write_alarm.as_mut() {
                Some(alarm) => alarm.as_mut().reset(due),
                None => self.write_alarm = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        match self.write_alarm.as_mut().map(|alarm| alarm.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "send_timeout: the caller took no bytes of the response in time",
            ))),
            _ => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// TLS flushes its records here: the caller's stall shows here too.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        self.after_write(cx, flushed)
    }

    /// Swallowed while parking: hyper closes its connection, not the socket.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.park_due() {
            return Poll::Ready(Ok(()));
        }
        let closed = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.after_write(cx, closed)
    }
}

#[cfg(test)]
mod tests {
    //! Real (short) time: the deadlines are what is under test.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEAD: Duration = Duration::from_millis(200);
    const IDLE: Duration = Duration::from_millis(600);
    const SEND: Duration = Duration::from_millis(300);

    fn pair() -> (IdleIo<tokio::io::DuplexStream>, tokio::io::DuplexStream, Arc<Activity>) {
        let (ours, theirs) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let timeouts = Timeouts { head: HEAD, idle: IDLE, park_after: None, send: SEND };
        (IdleIo::new(ours, activity.clone(), timeouts), theirs, activity)
    }

    async fn read_one(io: &mut IdleIo<tokio::io::DuplexStream>) -> io::Result<u8> {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await.map(|_| b[0])
    }

    fn around(elapsed: Duration, want: Duration) -> bool {
        elapsed >= want && elapsed < want + Duration::from_millis(150)
    }

    #[tokio::test]
    async fn fresh_connection_gets_the_head_timeout() {
        let (mut io, _peer, _) = pair();
        let start = Instant::now();
        let err = read_one(&mut io).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(around(start.elapsed(), HEAD), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn trickled_bytes_do_not_extend_the_head_timeout() {
        let (mut io, mut peer, _) = pair();
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            while peer.write_all(b"G").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut got = 0;
        let err = loop {
            match read_one(&mut io).await {
                Ok(_) => got += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(got >= 2, "{got}");
        assert!(around(start.elapsed(), HEAD), "{:?}", start.elapsed());
        writer.abort();
    }

    #[tokio::test]
    async fn busy_connection_has_no_deadline() {
        let (mut io, mut peer, activity) = pair();
        let in_flight = activity.begin();
        let reader = tokio::spawn(async move { read_one(&mut io).await });
        tokio::time::sleep(IDLE + HEAD).await;
        peer.write_all(b"x").await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), b'x');
        drop(in_flight);
    }

    #[tokio::test]
    async fn finished_request_starts_the_idle_timeout() {
        let (mut io, _peer, activity) = pair();
        drop(activity.begin());
        let start = Instant::now();
        let err = read_one(&mut io).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(around(start.elapsed(), IDLE), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn finishing_a_request_wakes_a_parked_reader() {
        let (mut io, _peer, activity) = pair();
        let in_flight = activity.begin();
        let reader = tokio::spawn(async move { read_one(&mut io).await });
        // Parked as busy; only the finish can start the idle clock.
        tokio::time::sleep(HEAD * 2).await;
        let start = Instant::now();
        drop(in_flight);
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(around(start.elapsed(), IDLE), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn first_byte_after_idle_starts_the_head_timeout() {
        let (mut io, mut peer, activity) = pair();
        drop(activity.begin());
        peer.write_all(b"G").await.unwrap();
        let start = Instant::now();
        assert_eq!(read_one(&mut io).await.unwrap(), b'G');
        let err = read_one(&mut io).await.unwrap_err();
        assert!(around(start.elapsed(), HEAD), "{:?} {err}", start.elapsed());
    }

    #[tokio::test]
    async fn upgraded_connection_has_no_deadline() {
        let (mut io, mut peer, activity) = pair();
        activity.begin().upgraded();
        let reader = tokio::spawn(async move { read_one(&mut io).await });
        tokio::time::sleep(IDLE + HEAD).await;
        peer.write_all(b"y").await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), b'y');
    }

    /// A connected loopback pair, the server side wrapped with parking on.
    async fn tcp_pair(park_after: Duration) -> (IdleIo<TcpStream>, TcpStream, Arc<Activity>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let activity = Arc::new(Activity::default());
        let timeouts = Timeouts { head: HEAD, idle: IDLE, park_after: Some(park_after), send: SEND };
        (IdleIo::new(server, activity.clone(), timeouts), client, activity)
    }

    #[tokio::test]
    async fn idle_connection_is_parked_then_times_out_at_the_idle_deadline() {
        let park = Duration::from_millis(100);
        let (mut io, _peer, activity) = tcp_pair(park).await;
        drop(activity.begin());
        let start = Instant::now();
        // hyper's read: pending until the park time, which raises the flag
        // and keeps the read pending.
        let mut b = [0u8; 1];
        let parked = tokio::time::timeout(IDLE, async {
            while !activity.park_due() {
                tokio::select! {
                    biased;
                    _ = io.read(&mut b) => panic!("read returned while idle"),
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        })
        .await;
        assert!(parked.is_ok(), "not parked within the idle timeout");
        assert!(around(start.elapsed(), park), "{:?}", start.elapsed());
        // hyper's shutdown is swallowed: the socket stays open.
        io.shutdown().await.unwrap();
        io.unpark(Bytes::new());
        assert!(!activity.park_due());
        let err = std::future::poll_fn(|cx| io.poll_parked(cx)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(around(start.elapsed(), IDLE), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn parked_connection_wakes_on_data_and_serves_leftovers_first() {
        let (mut io, mut peer, activity) = tcp_pair(Duration::from_millis(20)).await;
        drop(activity.begin());
        // hyper read until the socket blocked before it parked.
        let mut b = [0u8; 8];
        let blocked = std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut io).poll_read(cx, &mut ReadBuf::new(&mut b)).is_pending())
        })
        .await;
        assert!(blocked);
        let pending = std::future::poll_fn(|cx| Poll::Ready(io.poll_parked(cx).is_pending())).await;
        assert!(pending, "nothing to read yet");
        peer.write_all(b"T /").await.unwrap();
        std::future::poll_fn(|cx| io.poll_parked(cx)).await.unwrap();
        io.unpark(Bytes::from_static(b"GE"));
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /");
    }

    #[tokio::test]
    async fn connection_that_never_parks_reaches_the_idle_deadline_without_the_flag() {
        let (mut io, _peer, activity) = tcp_pair(Duration::from_millis(20)).await;
        io.never_park();
        drop(activity.begin());
        let err = read_one_tcp(&mut io).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(!activity.park_due());
    }

    /// Write into `io` until the peer's buffer is full and a write waits.
    async fn fill(io: &mut IdleIo<tokio::io::DuplexStream>) {
        let chunk = [0u8; 16];
        loop {
            let blocked =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_write(cx, &chunk).is_pending())).await;
            if blocked {
                return;
            }
        }
    }

    #[tokio::test]
    async fn write_the_caller_takes_nothing_of_fails_at_the_send_timeout() {
        let (mut io, _peer, _) = pair();
        fill(&mut io).await;
        let start = Instant::now();
        let err = io.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("send_timeout"), "{err}");
        assert!(around(start.elapsed(), SEND), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_caller_that_keeps_taking_bytes_is_not_cut() {
        let (mut io, mut peer, _) = pair();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut got = 0;
            while got < 64 * 8 {
                tokio::time::sleep(SEND / 3).await;
                got += peer.read(&mut buf).await.unwrap();
            }
            got
        });
        // 512 bytes through a 64-byte pipe, 16 bytes per SEND/3: stalls of
        // SEND/3 each, many SENDs in all.
        io.write_all(&[7u8; 64 * 8]).await.unwrap();
        assert!(reader.await.unwrap() >= 64 * 7);
    }

    /// A body of `frames` one-byte frames, tracked on `activity`.
    fn tracked(activity: &Arc<Activity>, frames: usize) -> Tracked<http_body_util::StreamBody<BoxedFrames>> {
        let frames: Vec<Result<Frame<Bytes>, io::Error>> =
            (0..frames).map(|_| Ok(Frame::data(Bytes::from_static(b"x")))).collect();
        let stream: BoxedFrames = Box::pin(futures_util::stream::iter(frames));
        Tracked::new(http_body_util::StreamBody::new(stream), activity.begin())
    }

    type BoxedFrames = Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send>>;

    #[tokio::test]
    async fn a_frame_left_waiting_for_the_caller_ends_the_connection_at_the_send_timeout() {
        use http_body_util::BodyExt;
        let (mut io, _peer, activity) = pair();
        let mut body = tracked(&activity, 3);
        body.frame().await.unwrap().unwrap();
        // Like HTTP/2 without a window from the caller: the next frame is not asked for.
        let start = Instant::now();
        let err = read_one(&mut io).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("send_timeout"), "{err}");
        assert!(around(start.elapsed(), SEND), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn frames_taken_on_keep_the_connection() {
        use http_body_util::BodyExt;
        let (mut io, mut peer, activity) = pair();
        let mut body = tracked(&activity, 4);
        let taker = tokio::spawn(async move {
            for _ in 0..4 {
                body.frame().await.unwrap().unwrap();
                tokio::time::sleep(SEND / 2).await;
            }
            drop(body);
            peer.write_all(b"z").await.unwrap();
            peer
        });
        assert_eq!(read_one(&mut io).await.unwrap(), b'z', "not cut while the caller kept taking frames");
        drop(taker.await.unwrap());
    }

    async fn read_one_tcp(io: &mut IdleIo<TcpStream>) -> io::Result<u8> {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await.map(|_| b[0])
    }
}
