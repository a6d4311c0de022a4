//! Client frames counted as their bytes pass, below tungstenite.
//!
//! tungstenite reassembles fragmented messages and answers pings inside one `read`, so
//! the socket loop sees messages, never frames: a client streaming empty continuation
//! frames reached no limit at all. [`FrameGuard`] wraps the socket's byte stream,
//! follows the headers of the frames the client sends, and charges every frame (data,
//! continuation and control alike) to the connection's frame rate and every fragment to
//! a per-message cap. Over either, reads fail with a [`Violation`], which the socket
//! loop turns into its close code.
//!
//! Written by hand: tungstenite 0.28's `WebSocketConfig` bounds frame and message
//! *sizes* only (no fragment count, no frame rate), and no maintained crate follows
//! WebSocket frame headers over an `AsyncRead`. The follower keeps one frame header
//! (14 bytes) and two counters inline: nothing is allocated per socket.
//!
//! ```text
//! byte 0: FIN(1) RSV(3) opcode(4)      byte 1: MASK(1) length(7)
//! length 126: 2 more bytes of length   length 127: 8 more bytes of length
//! MASK set: 4 bytes of masking key     then the payload (skipped here)
//! ```

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::limits::FrameLimiter;

/// Why a guarded socket stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// More frames than the connection's rate (`TICKETGATE_RATE_FRAMES`).
    #[error("more frames than the connection's rate")]
    Flood,
    /// More fragments in one message than `TICKETGATE_MAX_FRAGMENTS`.
    #[error("more fragments in one message than allowed")]
    TooManyFragments,
}

impl Violation {
    /// The violation an I/O error of a guarded socket carries, if it carries one.
    pub fn of(err: &io::Error) -> Option<Violation> {
        err.get_ref()?.downcast_ref::<Violation>().copied()
    }
}

impl From<Violation> for io::Error {
    fn from(v: Violation) -> Self {
        io::Error::other(v)
    }
}

/// The longest frame header: 2 bytes, 8 of extended length, 4 of masking key.
const MAX_HEAD: usize = 14;

/// Where the client's byte stream is, frame-wise.
#[derive(Debug, Default)]
struct Follower {
    /// The header being read.
    head: [u8; MAX_HEAD],
    /// Bytes of `head` read so far.
    head_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// Frames of the message in progress; 0 between messages.
    fragments: u32,
}

/// The header's full size, once its first two bytes are known.
fn head_size(head: &[u8]) -> Option<usize> {
    let second = *head.get(1)?;
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 == 0 { 0 } else { 4 };
    Some(2 + extended + mask)
}

/// The payload length of a complete header.
fn payload_len(head: &[u8]) -> u64 {
    let mut len = [0u8; 8];
    match head[1] & 0x7f {
        126 => len[6..].copy_from_slice(&head[2..4]),
        127 => len.copy_from_slice(&head[2..10]),
        short => len[7] = short,
    }
    u64::from_be_bytes(len)
}

impl Follower {
    /// Follows `bytes`; `frame(fin, opcode)` at each complete header.
    fn follow(
        &mut self,
        mut bytes: &[u8],
        mut frame: impl FnMut(&mut Self, bool, u8) -> Result<(), Violation>,
    ) -> Result<(), Violation> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                bytes = &bytes[skip..];
                self.payload_left -= skip as u64;
                continue;
            }
            self.head[self.head_len] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            let head = &self.head[..self.head_len];
            if head_size(head) != Some(self.head_len) {
                continue;
            }
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            self.payload_left = payload_len(head);
            self.head_len = 0;
            frame(self, fin, opcode)?;
        }
        Ok(())
    }

    /// Counts a data frame toward its message's fragments (control frames sit between
    /// fragments without being one).
    fn fragment(&mut self, fin: bool, opcode: u8, max: u32) -> Result<(), Violation> {
        if opcode & 0x8 != 0 {
            return Ok(());
        }
        self.fragments = if opcode == 0 {
            self.fragments.saturating_add(1)
        } else {
            1
        };
        if self.fragments > max {
            return Err(Violation::TooManyFragments);
        }
        if fin {
            self.fragments = 0;
        }
        Ok(())
    }
}

/// A socket's byte stream whose client frames are charged to a frame rate and a
/// fragment cap as they are read (see the module documentation). Writes pass through.
pub struct FrameGuard<S> {
    io: S,
    follower: Follower,
    limiter: FrameLimiter,
    max_fragments: u32,
    /// Set once over a limit: every later read fails the same way.
    violation: Option<Violation>,
}

impl<S> FrameGuard<S> {
    /// The guarded stream itself, for reading past the guard once the socket is
    /// closing (see `ws::Linger`).
    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Guards `io`, charging each frame to `limiter` and allowing `max_fragments` frames
    /// per message. `read_ahead`, bytes of the client's already read (they reach
    /// tungstenite without passing the guard), is charged first; over a limit, the
    /// first read fails.
    pub fn new(io: S, read_ahead: &[u8], limiter: FrameLimiter, max_fragments: u32) -> Self {
        let mut guard = FrameGuard {
            io,
            follower: Follower::default(),
            limiter,
            max_fragments,
            violation: None,
        };
        let _over = guard.observe(read_ahead);
        guard
    }

    /// Follows `bytes` from the client; a violation is kept for every later read.
    fn observe(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let (limiter, max) = (&self.limiter, self.max_fragments);
        let followed = self.follower.follow(bytes, |follower, fin, opcode| {
            follower.fragment(fin, opcode, max)?;
            limiter.check().map_err(|_| Violation::Flood)
        });
        if let Err(v) = followed {
            self.violation = Some(v);
        }
        followed
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(v) = this.violation {
            return Poll::Ready(Err(v.into()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Err(v) = this.observe(&buf.filled()[before..]) {
            // The frames of an over-limit read are not handed on.
            buf.set_filled(before);
            return Poll::Ready(Err(v.into()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;
    use crate::limits::frame_limiter;
    use governor::clock::DefaultClock;

    fn guard(rate: &str, max_fragments: u32) -> FrameGuard<()> {
        let limiter = frame_limiter(Rate::parse(rate).expect("rate"), &DefaultClock::default());
        FrameGuard::new((), &[], limiter, max_fragments)
    }

    /// A masked client frame with mask key 0.
    fn frame(fin: bool, opcode: u8, payload_len: usize) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload_len {
            0..=125 => out.push(0x80 | payload_len as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0; 4]);
        out.resize(out.len() + payload_len, b'x');
        out
    }

    #[test]
    fn every_frame_is_charged_whatever_its_length_and_however_it_is_split() {
        let mut bytes = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            bytes.extend(frame(true, 0x1, len));
        }
        bytes.extend(frame(true, 0x9, 0));
        // 7 frames, passed one byte at a time: the 8th cell is still free, the 9th not.
        let mut g = guard("8/min", 16);
        for b in &bytes {
            g.observe(std::slice::from_ref(b)).expect("within the rate");
        }
        g.observe(&frame(true, 0xA, 0)).expect("the 8th frame");
        assert_eq!(g.observe(&frame(true, 0x1, 0)), Err(Violation::Flood));
        assert_eq!(g.violation, Some(Violation::Flood), "kept for later reads");
    }

    #[test]
    fn fragments_are_capped_per_message_and_control_frames_do_not_count() {
        let mut g = guard("1000/s", 3);
        let mut message = frame(false, 0x1, 2);
        message.extend(frame(true, 0x9, 0));
        message.extend(frame(false, 0x0, 0));
        message.extend(frame(true, 0x0, 1));
        g.observe(&message).expect("three fragments and a ping");
        g.observe(&message)
            .expect("the count starts again with each message");
        let mut long = frame(false, 0x1, 0);
        for _ in 0..3 {
            long.extend(frame(false, 0x0, 0));
        }
        assert_eq!(g.observe(&long), Err(Violation::TooManyFragments));
    }

    #[test]
    fn a_violation_travels_inside_an_io_error() {
        let err = io::Error::from(Violation::TooManyFragments);
        assert_eq!(Violation::of(&err), Some(Violation::TooManyFragments));
        assert_eq!(Violation::of(&io::Error::other("other")), None);
    }
}
