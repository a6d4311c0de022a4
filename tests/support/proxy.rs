//! A loopback TCP proxy in front of a server (a Redis), which a test can freeze.
//!
//! Frozen, a connection stays open at both ends but carries nothing: whatever either
//! side sends is read and dropped, and a close is not passed on either. That is what a
//! NAT or load balancer does when it forgets an idle connection's mapping, and neither
//! end is told. [`Proxy::freeze`] then [`Proxy::thaw`] is exactly that: the open
//! connections are dead for good, new ones get through.
//!
//! Every task of the proxy is aborted when it is dropped, so a failing test leaves
//! nothing behind.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A running proxy; stops (closing every connection) on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// New connections start frozen.
    freezing: AtomicBool,
    /// One flag per connection accepted so far.
    links: Mutex<Vec<Arc<AtomicBool>>>,
    /// The accept loop and every pump.
    tasks: Mutex<Vec<AbortHandle>>,
    accepted: AtomicUsize,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        shared.track(accept.abort_handle());
        Proxy { addr, shared }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<port>`: a Redis URL that goes through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every open connection goes silent, for good (its bytes are dropped, so it could
    /// never be resumed in step); connections opened from now on are frozen too, until
    /// [`Proxy::thaw`].
    pub fn freeze(&self) {
        self.shared.freezing.store(true, Ordering::SeqCst);
        for link in self.shared.links.lock().unwrap().iter() {
            link.store(true, Ordering::SeqCst);
        }
    }

    /// Connections opened from now on are forwarded; frozen ones stay frozen.
    pub fn thaw(&self) {
        self.shared.freezing.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Shared {
    fn track(&self, task: AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(outbound) = TcpStream::connect(upstream).await else {
            // Upstream down: the client sees its connection closed.
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let frozen = Arc::new(AtomicBool::new(shared.freezing.load(Ordering::SeqCst)));
        shared.links.lock().unwrap().push(frozen.clone());
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        for (from, to) in [(in_read, out_write), (out_read, in_write)] {
            let pump = tokio::spawn(pump(from, to, frozen.clone()));
            shared.track(pump.abort_handle());
        }
    }
}

/// Copies `from` to `to` until either ends; while `frozen`, reads and drops. A frozen
/// pump never passes a close on: it keeps `to` open until the proxy is dropped
/// (dropping a write half would send a FIN).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if frozen.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let _ = to.shutdown().await;
}
