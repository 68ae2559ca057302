//! A loopback TCP proxy in front of the test server that can break INSERT requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the test proxy does to connections whose first request is an INSERT.
#[derive(Clone, Default)]
pub struct ProxyFaults {
    /// Forward the INSERT, wait until the server answers, then drop the connection without
    /// passing the answer on: the client cannot know the outcome.
    pub drop_after_answer: Arc<AtomicUsize>,
    /// Drop the connection before forwarding anything.
    pub drop_before_forward: Arc<AtomicUsize>,
    /// Connections dropped so far.
    pub dropped: Arc<AtomicUsize>,
    /// While set: drop, before forwarding, every INSERT whose request line contains this text
    /// (the table name appears in the query and in the sink's query ids).
    pub refuse_inserts_matching: Arc<Mutex<Option<String>>>,
    /// Ask the server to close every connection after one request (`Connection: close`), so
    /// that every request is the first of its connection and is looked at. Needed with
    /// `refuse_inserts_matching` (the client keeps connections alive otherwise).
    pub one_request_per_connection: Arc<std::sync::atomic::AtomicBool>,
}

impl ProxyFaults {
    /// Refuses every INSERT into `table` from now on (`None`: none).
    pub fn refuse_inserts_into(&self, table: Option<&str>) {
        *self
            .refuse_inserts_matching
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = table.map(String::from);
    }
}

fn take(budget: &AtomicUsize) -> bool {
    budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// A loopback TCP proxy to `upstream` on a background thread; returns its URL.
pub fn start_proxy(upstream: SocketAddr, faults: ProxyFaults) -> String {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(proxy_connection(client, upstream, faults.clone()));
            }
        });
    });
    format!("http://{addr}")
}

async fn proxy_connection(mut client: TcpStream, upstream: SocketAddr, faults: ProxyFaults) {
    let mut head = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let first_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let is_insert = String::from_utf8_lossy(first_line).contains("INSERT");
    let refused = faults
        .refuse_inserts_matching
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|m| String::from_utf8_lossy(first_line).contains(m.as_str()));
    if is_insert && refused {
        faults.dropped.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if is_insert && take(&faults.drop_before_forward) {
        faults.dropped.fetch_add(1, Ordering::SeqCst);
        return; // dropping `client` closes it
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if faults.one_request_per_connection.load(Ordering::SeqCst) {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.splice(end + 2..end + 2, b"Connection: close\r\n".iter().copied());
        }
    }
    if server.write_all(&head).await.is_err() {
        return;
    }
    if is_insert && take(&faults.drop_after_answer) {
        let (mut client_read, _client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let mut answer = [0u8; 1];
        tokio::select! {
            _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
            _ = server_read.read(&mut answer) => {}
        }
        faults.dropped.fetch_add(1, Ordering::SeqCst);
        return; // both connections close here; the answer never reaches the client
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

pub fn upstream_addr(url: &str) -> SocketAddr {
    let hostport = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .unwrap()
        .next()
        .unwrap()
}
