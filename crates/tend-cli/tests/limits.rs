//! The API under a connection flood, with the real binary: 300 clients that send half a request
//! and stall (slow headers) against a cap of 200 connections and a 2 s header deadline. The
//! stalled connections are closed by the server within the deadline, and `/v1/health` answers
//! again right after — the flood costs seconds, not the control plane.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Cluster;

#[test]
fn a_slow_header_flood_is_bounded_in_time() {
    let mut c = Cluster::start();
    c.kill_server();
    c.start_server_with(&["--max-connections", "200", "--header-timeout-seconds", "2"]);
    let t = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", c.port)) {
            let _ = s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n");
            stalled.push(s);
        }
    }
    // Every stalled connection is closed by the server (EOF or reset) within the deadline.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        // EOF, a reset, or an error answer (408) all end the request; a read that times out
        // means the server still holds the connection.
        let held = matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        assert!(!held, "a stalled connection is still open after 10 s");
    }
    let all_closed = t.elapsed();
    assert!(all_closed < Duration::from_secs(10), "stalled connections held {all_closed:?}");
    // And the API answers.
    let (status, v) = c.raw("GET", "/v1/health", None, None);
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")), "{v}");
    drop(stalled);
}
