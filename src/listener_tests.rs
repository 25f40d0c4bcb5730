use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

use super::*;

fn limits(max_connections: usize) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        handshake_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..ConnectionLimits::default_for(Port::Xds)
    }
}

async fn incoming(limits: ConnectionLimits) -> (Incoming, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (Incoming::new(listener, Port::Xds, limits), addr)
}

async fn next(incoming: &mut Incoming) -> ServerConn {
    tokio::time::timeout(Duration::from_secs(5), incoming.next())
        .await
        .expect("a connection in time")
        .expect("stream goes on")
        .expect("never an error")
}

/// Reads until the peer closes; true if it did within 5 s.
async fn closed_by_peer(client: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_slots_come_back() {
    let (mut incoming, addr) = incoming(limits(2)).await;
    let open = incoming.open_connections();
    let _a = TcpStream::connect(addr).await.expect("a");
    let _b = TcpStream::connect(addr).await.expect("b");
    let first = next(&mut incoming).await;
    let _second = next(&mut incoming).await;
    assert_eq!(open.load(Ordering::Relaxed), 2);

    let mut c = TcpStream::connect(addr).await.expect("c");
    // The third is accepted and closed while the stream waits for more.
    let pending = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
    assert!(pending.is_err(), "no third connection is handed out");
    assert!(
        closed_by_peer(&mut c).await,
        "the third connection is closed"
    );

    drop(first);
    assert_eq!(open.load(Ordering::Relaxed), 1);
    let _d = TcpStream::connect(addr).await.expect("d");
    let _again = next(&mut incoming).await;
    assert_eq!(open.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_silent_connection_times_out_and_a_talking_one_does_not() {
    let (mut incoming, addr) = incoming(limits(10)).await;
    let _silent = TcpStream::connect(addr).await.expect("connect");
    let mut conn = next(&mut incoming).await;
    let started = Instant::now();
    let mut buf = [0u8; 8];
    let err = conn.read(&mut buf).await.expect_err("times out");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A client that keeps sending within the idle timeout stays, past
    // several handshake and idle periods.
    let mut talker = TcpStream::connect(addr).await.expect("connect");
    let mut conn = next(&mut incoming).await;
    for _ in 0..6 {
        talker.write_all(b"x").await.expect("write");
        let n = conn.read(&mut buf).await.expect("reads");
        assert_eq!(n, 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Then it goes quiet: the idle timeout closes it.
    let err = conn.read(&mut buf).await.expect_err("idle");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("idle"), "{err}");
}

#[test]
fn backoff_doubles_to_a_second_and_resets() {
    let mut b = Backoff::default();
    let delays: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
    assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    for _ in 0..100 {
        assert!(b.next_delay() <= BACKOFF_MAX);
    }
    b.reset();
    assert_eq!(b.next_delay(), BACKOFF_FIRST);
}

#[test]
fn throttle_logs_once_per_interval_with_a_count() {
    let start = Instant::now();
    let mut t = Throttle::default();
    assert_eq!(t.due(start), Some(0));
    for i in 1..=50 {
        assert_eq!(t.due(start + Duration::from_millis(i * 100)), None);
    }
    assert_eq!(t.due(start + LOG_INTERVAL), Some(50));
    assert_eq!(t.due(start + LOG_INTERVAL + Duration::from_secs(1)), None);
}
