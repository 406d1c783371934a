//! Accepting connections for both transports: a cap on open connections, a deadline for the
//! first byte (a client that connects and says nothing would otherwise hold a slot forever),
//! and cleanup of the per-connection attribution when a connection closes.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::{attribution::Attributor, intake::Intake, ReceiverConfig, ReceiverStats};

/// Accepted connections waiting for a transport to pick them up; small, since the transports
/// take them as fast as they arrive.
const HANDOFF_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub(crate) struct Limits {
    connections: Arc<Semaphore>,
    first_byte_timeout: Duration,
    stats: Arc<ReceiverStats>,
    attributor: Arc<Attributor>,
}

impl Limits {
    pub(crate) fn new(
        config: &ReceiverConfig,
        stats: Arc<ReceiverStats>,
        intake: Arc<Intake>,
    ) -> Self {
        Self {
            // Shared by both listeners: the cap protects the agent's memory and fds, not a port.
            connections: Arc::new(Semaphore::new(config.max_connections)),
            first_byte_timeout: Duration::from_secs(config.header_read_timeout_secs),
            stats,
            attributor: Arc::clone(&intake.attributor),
        }
    }
}

/// An accepted connection that has sent at least one byte; holds its slot until dropped.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    _slot: OwnedSemaphorePermit,
    attributor: Arc<Attributor>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.attributor.forget(self.peer);
    }
}

/// Spawns the accept loop; connections come out of the returned channel until shutdown.
pub(crate) fn spawn_accept(
    listener: TcpListener,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stopped| *stopped) => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    log::warn!("otlp accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&limits.connections).try_acquire_owned() else {
                ReceiverStats::incr(&limits.stats.connections_rejected);
                continue; // dropping the stream closes it
            };
            let Ok(local) = stream.local_addr() else {
                continue;
            };
            let limits = limits.clone();
            let tx = tx.clone();
            // Waiting for the first byte happens per connection, so a silent client never
            // delays the accept of the next one.
            tokio::spawn(async move {
                let mut probe = [0u8; 1];
                match tokio::time::timeout(limits.first_byte_timeout, stream.peek(&mut probe)).await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return, // closed or failed before sending anything
                    Err(_elapsed) => {
                        ReceiverStats::incr(&limits.stats.connections_timed_out);
                        return;
                    }
                }
                let conn = Conn {
                    stream,
                    peer,
                    local,
                    _slot: slot,
                    attributor: limits.attributor,
                };
                // Err: the transport stopped (shutdown); the connection just closes.
                let _stopped: Result<(), _> = tx.send(conn).await;
            });
        }
    });
    rx
}

impl Connected for Conn {
    // tonic puts this into each request's extensions; `Request::remote_addr` reads it.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
