//! A TCP echo server standing in for a protected service; it remembers
//! the peer address of every connection it served.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    thread,
};

pub struct EchoServer {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoServer {
    /// Listens on `ip` at a free port.
    pub fn start(ip: &str) -> EchoServer {
        let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("binding echo server on {ip}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if let Ok(peer) = stream.peer_addr() {
                    seen.lock().unwrap().push(peer);
                }
                thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        EchoServer { addr, peers }
    }

    /// Peer addresses of the connections served so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// A loopback address of the 127/8 range that no other test uses, so tests
/// running at once never share a target.
pub fn unique_loopback_ip() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 200) * 50;
    format!("127.{}.{}.{}", 10 + (n / 62500) % 200, (n / 250) % 250, 2 + n % 250)
}
