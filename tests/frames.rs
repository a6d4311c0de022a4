//! Frame floods against a real node over loopback: every frame a client sends counts
//! against `TICKETGATE_RATE_FRAMES`, continuation and control frames included, and a
//! message may have at most `TICKETGATE_MAX_FRAGMENTS` fragments. Each flood is bounded
//! (3 s); the test prints how many frames went out before the close arrived.
//!
//! The frames are counted by `ws::accept`'s guard, which `http::admission` builds every
//! socket with.

mod support;

use std::time::{Duration, Instant};

use support::{StoreKind, TestServer};
use ticketgate::config::Config;
use ticketgate_sdk::protocol::close;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::MaybeTlsStream;

/// How long a flood may go on before the test gives up on a close.
const FLOOD_FOR: Duration = Duration::from_secs(3);

/// A masked client frame (mask key 0: the payload goes as is) with an empty or short
/// payload.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut out = vec![u8::from(fin) << 7 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// What a flood achieved: frames written until the close arrived, the close code.
struct Flood {
    frames_sent: u64,
    close: Option<u16>,
    after: Duration,
}

/// How fast a flood goes.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// ~64 KiB per write, as fast as the socket takes them: how long until the close.
    FullSpeed,
    /// One `repeat` per millisecond: the count of frames sent before the close is then
    /// (within a few) the count the server accepted, not what the kernel buffered.
    OnePerMs,
}

/// Connects a fresh socket on a node with the default frame settings, writes `opening`
/// once, then `repeat` (holding `per_repeat` frames) over and over until the server's
/// close frame arrives, the write fails or [`FLOOD_FOR`] is over.
async fn flood(opening: &[u8], repeat: &[u8], per_repeat: u64, pace: Pace) -> Flood {
    let server = TestServer::builder()
        .store(StoreKind::Memory)
        .config(|c| {
            c.rates.frames = Config::defaults().rates.frames;
        })
        .start()
        .await;
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let (mut ws, _welcome) = client.connect(&session, &ticket).await.expect("connect");
    let MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        panic!("a plain TCP socket")
    };
    let (mut reader, mut writer) = tcp.split();

    // Batches of ~64 KiB so the flood is not paced by syscalls.
    let copies = match pace {
        Pace::FullSpeed => (64 * 1024 / repeat.len()).max(1),
        Pace::OnePerMs => 1,
    };
    let batch: Vec<u8> = repeat.repeat(copies);
    let started = Instant::now();
    let mut frames_sent = 0u64;
    let write = async {
        writer.write_all(opening).await?;
        while started.elapsed() < FLOOD_FOR {
            writer.write_all(&batch).await?;
            frames_sent += per_repeat * copies as u64;
            if let Pace::OnePerMs = pace {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        std::io::Result::Ok(())
    };
    let read = async {
        let mut buf = Vec::new();
        loop {
            if let Some(code) = close_code_in(&buf) {
                return Some(code);
            }
            let mut chunk = [0u8; 512];
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return close_code_in(&buf),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let close = {
        tokio::pin!(write, read);
        tokio::select! {
            code = &mut read => code,
            _ = &mut write => {
                // The writer ended first (bound reached or the socket failed): give the
                // close frame a moment to arrive.
                tokio::time::timeout(Duration::from_secs(1), &mut read).await.ok().flatten()
            }
        }
    };
    let after = started.elapsed();
    server.stop().await;
    Flood {
        frames_sent,
        close,
        after,
    }
}

/// The code of the first close frame among the (unmasked, server) frames in `buf`.
fn close_code_in(mut buf: &[u8]) -> Option<u16> {
    while buf.len() >= 2 {
        let (opcode, len7) = (buf[0] & 0x0f, usize::from(buf[1] & 0x7f));
        let (head, len) = match len7 {
            126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
            126 | 127 => return None,
            n => (2, n),
        };
        if buf.len() < head + len {
            return None;
        }
        if opcode == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([buf[head], buf[head + 1]]));
        }
        buf = &buf[head + len..];
    }
    None
}

/// Floods at both paces; prints the figures.
async fn both_paces(what: &str, opening: &[u8], repeat: &[u8], per_repeat: u64) -> [Flood; 2] {
    let mut out = Vec::new();
    for pace in [Pace::OnePerMs, Pace::FullSpeed] {
        let f = flood(opening, repeat, per_repeat, pace).await;
        eprintln!(
            "{what}, {pace:?}: {} frames sent before the close ({:?}) after {:?}",
            f.frames_sent, f.close, f.after
        );
        out.push(f);
    }
    let [paced, full] = <[Flood; 2]>::try_from(out).ok().expect("two floods");
    [paced, full]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_continuation_frames_are_capped_per_message() {
    let opening = frame(false, 0x1, b"{");
    let [paced, full] =
        both_paces("empty continuations", &opening, &frame(false, 0x0, b""), 1).await;
    for f in [&paced, &full] {
        assert_eq!(
            f.close,
            Some(close::POLICY),
            "closed, as too many fragments"
        );
        assert!(f.after < FLOOD_FOR, "closed within the flood's bound");
    }
    let fragments = u64::from(Config::defaults().ws.max_fragments);
    assert!(paced.frames_sent <= fragments + 5, "{}", paced.frames_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_closes_with_4008() {
    let [paced, full] = both_paces("pings", &[], &frame(true, 0x9, b""), 1).await;
    for f in [&paced, &full] {
        assert_eq!(f.close, Some(close::FLOOD));
        assert!(f.after < FLOOD_FOR, "closed within the flood's bound");
    }
    // 50 in the burst, a few more replenished while the flood runs.
    assert!(paced.frames_sent <= 60, "{}", paced.frames_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_fragments_count_one_by_one() {
    // Whole `ack` messages of two fragments each: 50 frames are 25 messages.
    let mut message = frame(false, 0x1, br#"{"type":"ack","#);
    message.extend(frame(true, 0x0, br#""id":"1"}"#));
    let [paced, full] = both_paces("two-fragment messages", &[], &message, 2).await;
    for f in [&paced, &full] {
        assert_eq!(f.close, Some(close::FLOOD));
        assert!(f.after < FLOOD_FOR, "closed within the flood's bound");
    }
    assert!(paced.frames_sent <= 60, "{}", paced.frames_sent);
}
