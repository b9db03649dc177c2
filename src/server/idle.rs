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
use tokio::time::{Instant, Sleep};

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
}

/// One request in flight; dropping it finishes the request.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// The connection was upgraded: the phases no longer apply.
    pub fn upgraded(&self) {
        self.0.upgraded();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        self.0.reader.wake();
    }
}

/// A response body that keeps its request in flight until it is dropped.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// Keep `in_flight` alive for as long as `inner`.
    pub fn new(inner: B, in_flight: InFlight) -> Tracked<B> {
        Tracked { inner, _in_flight: in_flight }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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

/// The connection's IO under the head and idle deadlines.
pub struct IdleIo<I> {
    inner: I,
    activity: Arc<Activity>,
    phase: Phase,
    finished_seen: u64,
    deadline: Pin<Box<Sleep>>,
    head_timeout: Duration,
    idle_timeout: Duration,
}

impl<I> IdleIo<I> {
    /// Wrap a fresh connection: it starts in the head phase.
    pub fn new(inner: I, activity: Arc<Activity>, head_timeout: Duration, idle_timeout: Duration) -> IdleIo<I> {
        let deadline = Box::pin(tokio::time::sleep(head_timeout));
        IdleIo { inner, activity, phase: Phase::Head, finished_seen: 0, deadline, head_timeout, idle_timeout }
    }

    fn enter(&mut self, phase: Phase, timeout: Duration) {
        self.phase = phase;
        self.deadline.as_mut().reset(Instant::now() + timeout);
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
            self.enter(Phase::Idle, self.idle_timeout);
        }
        self.finished_seen = finished;
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.follow_requests();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.phase == Phase::Idle && buf.filled().len() > before {
                    let timeout = this.head_timeout;
                    this.enter(Phase::Head, timeout);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.phase == Phase::Busy => {
                this.activity.reader.register(cx.waker());
                Poll::Pending
            }
            Poll::Pending if matches!(this.phase, Phase::Head | Phase::Idle) => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, timeout_message(this.phase))))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

fn timeout_message(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => "idle_timeout: connection idle",
        _ => "header_read_timeout: request head not received in time",
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Real (short) time: the deadlines are what is under test.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEAD: Duration = Duration::from_millis(200);
    const IDLE: Duration = Duration::from_millis(600);

    fn pair() -> (IdleIo<tokio::io::DuplexStream>, tokio::io::DuplexStream, Arc<Activity>) {
        let (ours, theirs) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        (IdleIo::new(ours, activity.clone(), HEAD, IDLE), theirs, activity)
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
}
