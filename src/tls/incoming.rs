//! TLS connections out of a stream of TCP connections: each accepted
//! connection gets its handshake as a future of its own (at most
//! [`MAX_HANDSHAKES`] at once, each at most [`HANDSHAKE_TIMEOUT`]), so a slow
//! or silent client holds up no one. A failed handshake (no client
//! certificate, an unknown CA, plaintext sent to a TLS port) drops that
//! connection only; it is counted in `tollgate_tls_handshake_failures_total`
//! and logged at debug level (`RUST_LOG=tollgate::tls=debug`).
//!
//! [`TlsIncoming`] is what tonic's `serve_with_incoming` takes;
//! [`TlsListener`] is the same for `axum::serve`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::{Alpn, ServerTls, HANDSHAKE_TIMEOUT};

/// Most handshakes in progress on one listener; past it, new connections
/// wait in the kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 1024;

type Handshake = Pin<Box<dyn Future<Output = Option<TlsStream<TcpStream>>> + Send>>;

/// The TLS connections of a listener, handshake done.
pub struct TlsIncoming<S> {
    tcp: S,
    tcp_done: bool,
    tls: ServerTls,
    alpn: Alpn,
    handshakes: FuturesUnordered<Handshake>,
}

impl<S> TlsIncoming<S>
where
    S: Stream<Item = io::Result<TcpStream>> + Unpin,
{
    /// TLS over the connections of `tcp`, offering `alpn`, with the
    /// configuration `tls` holds at each handshake.
    pub fn new(tcp: S, tls: ServerTls, alpn: Alpn) -> Self {
        Self { tcp, tcp_done: false, tls, alpn, handshakes: FuturesUnordered::new() }
    }

    fn handshake(&self, tcp: TcpStream) -> Handshake {
        let acceptor = self.tls.acceptor(self.alpn);
        Box::pin(async move {
            let peer = tcp.peer_addr().ok();
            let failed = |error: String| {
                metrics::counter!("tollgate_tls_handshake_failures_total").increment(1);
                tracing::debug!(peer = ?peer, %error, "TLS handshake failed");
                None
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(e)) => failed(e.to_string()),
                Err(_) => failed(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
            }
        })
    }
}

impl<S> Stream for TlsIncoming<S>
where
    S: Stream<Item = io::Result<TcpStream>> + Unpin,
{
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Take every connection waiting (up to the cap): each starts its
        // handshake now.
        while !this.tcp_done && this.handshakes.len() < MAX_HANDSHAKES {
            match Pin::new(&mut this.tcp).poll_next(cx) {
                Poll::Ready(Some(Ok(tcp))) => {
                    let h = this.handshake(tcp);
                    this.handshakes.push(h);
                }
                // An accept error (out of file descriptors, ...) goes to the
                // server, which logs it and goes on.
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.tcp_done = true,
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(tls))) => return Poll::Ready(Some(Ok(tls))),
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(None) if this.tcp_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A TLS listener for `axum::serve`.
pub struct TlsListener<S> {
    incoming: TlsIncoming<S>,
    local: SocketAddr,
}

impl<S> TlsListener<S>
where
    S: Stream<Item = io::Result<TcpStream>> + Unpin,
{
    /// The connections of `incoming`, which `local` accepts.
    pub fn new(incoming: TlsIncoming<S>, local: SocketAddr) -> Self {
        Self { incoming, local }
    }
}

impl<S> axum::serve::Listener for TlsListener<S>
where
    S: Stream<Item = io::Result<TcpStream>> + Unpin + Send + 'static,
{
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(tls)) => {
                    let peer = tls.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (tls, peer);
                }
                // As axum's own TCP listener does: an accept error (out of
                // file descriptors, ...) is worth a pause, not an exit.
                Some(Err(e)) => {
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
