//! WebSocket: the frame loop of an admitted connection ([`connection`]), the guard that
//! counts its client frames ([`frames`]), [`accept`] that puts a socket together, and the
//! WebSocket settings every socket of a node (and the load harness's baseline) uses.
//! Admission, the upgrade that consumes a ticket, is HTTP's: `http::admission`.

pub(crate) mod connection;
pub(crate) mod frames;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use self::connection::SocketNode;
use self::frames::FrameGuard;

/// The server side of an admitted socket on `io`, its client frames counted by a
/// [`FrameGuard`] with the node's frame rate and fragment cap: tungstenite alone would
/// hand the loop whole messages and let any number of frames through unseen.
/// `read_ahead`: bytes the client sent after its request head that were already read.
pub async fn accept<S>(
    io: S,
    read_ahead: Vec<u8>,
    node: &SocketNode,
    config: WebSocketConfig,
) -> WebSocketStream<FrameGuard<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = node.frame_guard(io, &read_ahead);
    WebSocketStream::from_partially_read(io, read_ahead, Role::Server, Some(config)).await
}

/// What a socket does after its close frame went out: read and discard what the peer
/// still sends, until it closes its side or `deadline`. A socket dropped with unread
/// bytes in its receive buffer is reset (RST) by the kernel, and the peer may then
/// lose the close frame it was sent: after a frame guard refused a flood, tungstenite
/// reads nothing more, so this reads below it.
pub(crate) trait Linger {
    /// Discards input until the peer's EOF or `deadline`.
    fn linger(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = ()> + Send;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Linger for WebSocketStream<FrameGuard<S>> {
    async fn linger(&mut self, deadline: tokio::time::Instant) {
        use tokio::io::AsyncReadExt;
        let io = self.get_mut().inner_mut();
        let mut scratch = [0u8; 1024];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut scratch)).await {
            if n == 0 {
                return;
            }
        }
    }
}

impl<L: Linger + Send> Linger for Box<L> {
    async fn linger(&mut self, deadline: tokio::time::Instant) {
        (**self).linger(deadline).await;
    }
}

/// tungstenite's limits lowered from its 64 MiB default to the protocol's frame limit,
/// and small buffers: most sockets are idle most of the time, and tungstenite's read
/// buffer is allocated up front for every socket. The load harness's baseline server
/// uses this same function, so both are measured with the same buffer settings.
pub fn ws_config_for(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame_bytes * 4)
        .accept_unmasked_frames(false)
}

/// tungstenite's read buffer per socket. Client frames are small JSON; a larger frame
/// grows the buffer for its own length only.
pub const READ_BUFFER_BYTES: usize = 1024;
