//! A loopback TCP proxy that injects network faults between two services:
//! added latency, connection resets, a black hole, or requests that arrive
//! while their answers are lost.
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways, each chunk delayed by this much.
    Pass(Duration),
    /// Resets every connection, open or new.
    Reset,
    /// Accepts and keeps connections, forwards nothing either way.
    BlackHole,
    /// Forwards requests; drops every byte of the answers.
    DropResponses,
}

pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Connections accepted so far.
    pub accepted: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `127.0.0.1:target`.
    pub async fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().unwrap().port();
        let (mode, rx) = watch::channel(Mode::Pass(Duration::ZERO));
        let accepted = Arc::new(Mutex::new(0u64));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                *count.lock().unwrap() += 1;
                let rx = rx.clone();
                tokio::spawn(connection(client, target, rx));
            }
        });
        FaultProxy {
            port,
            mode,
            accepted,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reset(s: TcpStream) {
    // SO_LINGER 0: close with RST rather than FIN.
    let _ = s.set_zero_linger();
    drop(s);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Requests,
    Answers,
}

/// Copies one direction of a connection, as the mode says, until it ends.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
    direction: Direction,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let m = *mode.borrow();
        match m {
            Mode::Reset => return,
            Mode::BlackHole => continue,
            Mode::DropResponses if direction == Direction::Answers => continue,
            Mode::DropResponses => {}
            Mode::Pass(d) => {
                if !d.is_zero() {
                    tokio::time::sleep(d).await;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn connection(client: TcpStream, target: u16, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow() == Mode::Reset {
        return reset(client);
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Whatever ends a connection here ends it with RST, as a reset would.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, mode.clone(), Direction::Requests);
    let down = pump(sr, cw, mode.clone(), Direction::Answers);
    // Ends when either direction ends, or when the mode turns to Reset.
    let reset_signal = async move {
        let _ = mode.wait_for(|m| *m == Mode::Reset).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = reset_signal => {}
    }
}
