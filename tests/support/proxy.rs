//! A TCP proxy between walpoints and a PostgreSQL server that injects connection faults on
//! command: close every connection (`drop_all`), reset it (`reset_all`: RST, as a crashed
//! middlebox or a killed peer does), or black-hole it (`stall`: connections stay open but no
//! byte moves either way, and new ones are accepted but never answered), or stall only what
//! the client sends (`stall_upstream`: the server's stream still arrives but the client's
//! acknowledgements never do), or refuse new connections (`refuse`: reset at once, like a
//! server that is down), or black-hole for good only the connections open now
//! (`black_hole_all`: a dead host, or a lost route, that new connections do not meet).
//!
//! Bytes read while a direction is stalled are held, not forwarded, and are thrown away if the
//! connection is then dropped or reset: a held acknowledgement never reaches the server late.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How [`Proxy`] ends the connections it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// Close both sides (FIN).
    Drop,
    /// Close both sides with SO_LINGER 0 (RST).
    Reset,
}

struct Shared {
    target: SocketAddr,
    /// Nothing moves in either direction, and new connections are not answered.
    stall: watch::Sender<bool>,
    /// Client → server bytes are held.
    stall_up: watch::Sender<bool>,
    /// Bumped by each `drop_all`/`reset_all`, with how: connections older than it end.
    kill: watch::Sender<(u64, Kill)>,
    /// New connections are reset at once.
    refuse: watch::Sender<bool>,
    /// Bumped by each `black_hole_all`: connections older than it go silent for good.
    hole: watch::Sender<u64>,
    accepted: AtomicU64,
    /// Connections being served now.
    live: AtomicU64,
}

/// Counts a connection as live while it is served.
struct Live(Arc<Shared>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A fault-injecting TCP proxy on a free loopback port; it stops when dropped.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target)),
            stall: watch::channel(false).0,
            stall_up: watch::channel(false).0,
            kill: watch::channel((0, Kill::Drop)).0,
            refuse: watch::channel(false).0,
            hole: watch::channel(0).0,
            accepted: AtomicU64::new(0),
            live: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::Relaxed);
                if *s.refuse.borrow() {
                    reset_on_close(client.as_raw_fd());
                    continue;
                }
                s.live.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, s.clone()));
            }
        });
        Proxy {
            port,
            shared,
            accept,
        }
    }

    /// A proxy in front of the server `url` names (its port), and `url` pointed at the proxy.
    pub async fn in_front_of(url: &str) -> (Proxy, String) {
        let mut parsed = url::Url::parse(url).expect("a URL");
        let proxy = Proxy::start(parsed.port().unwrap_or(5432)).await;
        parsed.set_port(Some(proxy.port)).unwrap();
        (proxy, parsed.to_string())
    }

    /// Closes every connection open now, cleanly (FIN to both ends).
    pub fn drop_all(&self) {
        self.shared.kill.send_modify(|(n, k)| {
            *n += 1;
            *k = Kill::Drop;
        });
    }

    /// Resets every connection open now (RST to both ends).
    pub fn reset_all(&self) {
        self.shared.kill.send_modify(|(n, k)| {
            *n += 1;
            *k = Kill::Reset;
        });
    }

    /// Black-holes (or, with false, restores) every connection and holds new ones unanswered.
    pub fn stall(&self, on: bool) {
        self.shared.stall.send_replace(on);
    }

    /// Black-holes every connection open now for good (no byte moves either way, no FIN, no
    /// RST: a host that died), while new connections are served as before. `drop_all` and
    /// `reset_all` still end them.
    pub fn black_hole_all(&self) {
        self.shared.hole.send_modify(|n| *n += 1);
    }

    /// Resets (or, with false, serves again) every new connection at once.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.send_replace(on);
    }

    /// Holds (or, with false, releases) what clients send; the servers' bytes still arrive.
    pub fn stall_upstream(&self, on: bool) {
        self.shared.stall_up.send_replace(on);
    }

    /// Connections being served now: after `drop_all` or `reset_all`, wait for this to reach
    /// zero before lifting a stall, or bytes held for a dying connection may still go out.
    pub fn live(&self) -> u64 {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

/// Forwards one connection until either end closes it or a kill newer than its start arrives.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let _live = Live(shared.clone());
    let mut kill = shared.kill.subscribe();
    let born = kill.borrow_and_update().0;
    let mut hole = shared.hole.subscribe();
    let born_hole = *hole.borrow_and_update();
    let mut stalled = shared.stall.subscribe();
    let connected = async {
        let _ = stalled.wait_for(|s| !*s).await;
        TcpStream::connect(shared.target).await
    };
    let upstream = tokio::select! {
        up = connected => match up {
            Ok(up) => up,
            Err(_) => return,
        },
        _ = kill.wait_for(|(n, _)| *n > born) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let fds = [cw.as_ref().as_raw_fd(), uw.as_ref().as_raw_fd()];
    let up = pump(
        cr,
        uw,
        shared.stall.subscribe(),
        shared.stall_up.subscribe(),
    );
    let down = pump(ur, cw, shared.stall.subscribe(), watch::channel(false).1);
    // Pinned out here so a black hole can stop polling them while the sockets stay open.
    let pumps = async { tokio::join!(up, down) };
    tokio::pin!(pumps);
    let mut holed = false;
    loop {
        tokio::select! {
            biased;
            how = kill.wait_for(|(n, _)| *n > born) => {
                if how.is_ok_and(|h| h.1 == Kill::Reset) {
                    for fd in fds {
                        reset_on_close(fd);
                    }
                }
                // Leaving drops both sockets (and any bytes held for them).
                return;
            }
            _ = hole.wait_for(|n| *n > born_hole), if !holed => holed = true,
            _ = &mut pumps, if !holed => return,
        }
    }
}

/// Sets SO_LINGER to 0, so that closing the socket sends RST instead of FIN.
fn reset_on_close(fd: i32) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a socket this task still owns, with a properly sized value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Copies `from` to `to` while neither stall is on; passes EOF on as a half-close.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut stall: watch::Receiver<bool>,
    mut stall_this_way: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let _ = stall.wait_for(|s| !*s).await;
        let _ = stall_this_way.wait_for(|s| !*s).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A stall that began while reading holds these bytes too.
        loop {
            let _ = stall.wait_for(|s| !*s).await;
            let _ = stall_this_way.wait_for(|s| !*s).await;
            if !*stall.borrow() && !*stall_this_way.borrow() {
                break;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
