//! Ports for test servers that must be known before they bind (an Envoy
//! listener named in a snapshot, a `teal serve --xds-addr`).

use std::sync::atomic::{AtomicU16, Ordering};

/// Below Linux's ephemeral range (32768 and up): binding port 0 hands out
/// ports from that range, which is also where every outgoing connection
/// on the machine takes its source port, so such a port is often taken
/// again between the test picking it and the server binding it. A port
/// from here is only ever taken by an explicit bind.
const FIRST: u16 = 20_000;
const LAST: u16 = 32_000;

/// A TCP port on 127.0.0.1 that was free a moment ago, never the same
/// twice in one test process, chosen outside the ephemeral range.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = u32::from(LAST - FIRST);
    // Test processes running at the same time start far apart.
    let start = (std::process::id().wrapping_mul(7919) % span) as u16;
    let _ = NEXT.compare_exchange(0, start + 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % (LAST - FIRST);
        let port = FIRST + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {LAST}")
}
