//! A loopback webhook receiver for benchmarks (`bench/ops.sh`): answers every POST with 200
//! and a WeCom-style success body (`{"errcode":0,"errmsg":"ok"}`), so it serves as the trigger
//! webhook, the alert webhook and a WeCom robot alike, and costs next to nothing on the cores
//! it shares with the pipeline. Runs until it is killed.
//!
//! `cargo run --release -p adflow-cli --example webhook_sink -- 127.0.0.1:18482`

use std::sync::Arc;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18482".into());
    let server = Arc::new(tiny_http::Server::http(&addr).expect("bind the receiver"));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    let mut body = Vec::new();
                    let _ = req.as_reader().read_to_end(&mut body);
                    let _ = req.respond(tiny_http::Response::from_string(
                        "{\"errcode\":0,\"errmsg\":\"ok\"}",
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
