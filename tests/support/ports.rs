//! Ports for test servers that must be known before they bind (an Envoy
//! listener named in a snapshot, a `teal serve --xds-addr`): free ones
//! ([`free_port`]), and the fixed ones of the README and the bundled
//! config, one test at a time ([`fixed`]).

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

/// The fixed ports some tests cannot do without, which no two tests may
/// use at once: the README walk-through's (teal 18000 and 18001, Envoy
/// 10000 and 9901, the fleets 8101, 8102, 8201 and 8202) and the bundled
/// config's (`examples/teal.yaml`: listeners 10000 and 15001, fleets
/// 8101-8202), which a test binds when it stands in for a fleet of that
/// config or hands a real Envoy its listeners. [`free_port`] never picks
/// them.
pub const FIXED: [u16; 9] = [8101, 8102, 8201, 8202, 9901, 10000, 15001, 18000, 18001];

/// The file whose lock is the right to use the [`FIXED`] ports.
pub fn fixed_lock_path() -> std::path::PathBuf {
    std::env::temp_dir().join("teal-tests-fixed-ports.lock")
}

/// The right to use the [`FIXED`] ports, until dropped.
#[must_use = "the ports are only held while the guard lives"]
pub struct FixedPorts {
    _lock: std::fs::File,
}

/// Waits until no other test uses the [`FIXED`] ports, and holds them for
/// this one until the guard is dropped.
///
/// The tests of one binary run on threads of one process, and `cargo
/// nextest` or two checkouts on one machine run several test processes at
/// once, so the lock is a file lock (flock) in the temporary directory:
/// it holds across processes as well as threads, and goes with the
/// process if that dies.
pub async fn fixed() -> FixedPorts {
    let path = fixed_lock_path();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // Waiting for the lock blocks a thread; not one of the runtime's.
    let file = tokio::task::spawn_blocking(move || {
        file.lock()
            .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
        file
    })
    .await
    .expect("the lock's thread");
    FixedPorts { _lock: file }
}
