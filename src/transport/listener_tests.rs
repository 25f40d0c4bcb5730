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

const PREFACE: &[u8; PREFACE_BYTES] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection whose handshake is done: its client sent the preface and
/// the server read it.
async fn established(addr: SocketAddr, incoming: &mut Incoming) -> (TcpStream, ServerConn) {
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let mut conn = next(incoming).await;
    client.write_all(PREFACE).await.expect("preface");
    let mut buf = [0u8; PREFACE_BYTES];
    conn.read_exact(&mut buf).await.expect("read the preface");
    (client, conn)
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_slots_come_back() {
    let (mut incoming, addr) = incoming(limits(2)).await;
    let open = incoming.open_connections();
    let (_a, first) = established(addr, &mut incoming).await;
    let (_b, _second) = established(addr, &mut incoming).await;
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
    let (mut talker, mut conn) = established(addr, &mut incoming).await;
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

#[tokio::test]
async fn a_handshake_dribbled_a_byte_at_a_time_times_out() {
    let (mut incoming, addr) = incoming(limits(10)).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let mut conn = next(&mut incoming).await;
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        // One byte every 50 ms: well within the idle timeout, never a
        // whole preface within the handshake timeout.
        for byte in PREFACE.iter().cycle().take(200) {
            if client.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = [0u8; 1];
    let err = loop {
        match conn.read(&mut buf).await {
            Ok(0) => panic!("the client closed first"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("handshake"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(600),
        "closed after {took:?}, the handshake timeout is 300 ms"
    );
    dribble.abort();
}

#[tokio::test]
async fn a_full_port_makes_room_by_closing_the_oldest_unfinished_handshake() {
    let (mut incoming, addr) = incoming(limits(2)).await;
    let open = incoming.open_connections();
    let mut slow = TcpStream::connect(addr).await.expect("slow");
    let mut oldest = next(&mut incoming).await;
    let (_done, _established) = established(addr, &mut incoming).await;
    assert_eq!(open.load(Ordering::Relaxed), 2);

    // A third client: the oldest unfinished handshake makes room for it.
    let (_new, _new_conn) = established(addr, &mut incoming).await;
    assert_eq!(open.load(Ordering::Relaxed), 2);
    let mut buf = [0u8; 8];
    let err = oldest.read(&mut buf).await.expect_err("evicted");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
    drop(oldest);
    assert!(closed_by_peer(&mut slow).await, "the slow client is closed");
    assert_eq!(open.load(Ordering::Relaxed), 2, "counted once");

    // Every connection is established now: a fourth is refused.
    let mut fourth = TcpStream::connect(addr).await.expect("fourth");
    let pending = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
    assert!(pending.is_err(), "no fourth connection is handed out");
    assert!(closed_by_peer(&mut fourth).await, "the fourth is closed");
    assert_eq!(open.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_handshake_read_slowly_from_a_full_buffer_still_times_out() {
    // Every read finds data waiting, so none is left pending (where the
    // timer is looked at); the deadline is checked on the data too.
    let (mut incoming, addr) = incoming(limits(10)).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let mut conn = next(&mut incoming).await;
    client.write_all(PREFACE).await.expect("preface");
    let mut buf = [0u8; 1];
    let mut read = 0;
    let err = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match conn.read(&mut buf).await {
            Ok(n) => {
                read += n;
                assert!(read < PREFACE_BYTES, "the whole preface was taken late");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
}
