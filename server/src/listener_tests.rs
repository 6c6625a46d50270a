use super::*;

fn limits(protocol: Protocol) -> ConnLimits {
    ConnLimits {
        max_connections: 1,
        header: Some(Duration::from_secs(10)),
        idle: Some(Duration::from_secs(60)),
        protocol,
    }
}

#[tokio::test(start_paused = true)]
async fn http_deadlines_follow_the_request_cycle() {
    let a = Arc::new(Activity::new(limits(Protocol::Http)));
    let start = Instant::now();
    assert_eq!(
        a.deadline(),
        Some(start + Duration::from_secs(10)),
        "headers due"
    );
    a.on_bytes();
    assert_eq!(
        a.deadline(),
        Some(start + Duration::from_secs(10)),
        "bytes do not extend it"
    );
    let guard = a.begin();
    assert_eq!(a.deadline(), None, "busy: the handler's limits apply");
    tokio::time::advance(Duration::from_secs(30)).await;
    drop(guard);
    let idle_from = Instant::now();
    assert_eq!(
        a.deadline(),
        Some(idle_from + Duration::from_secs(60)),
        "idle"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    a.on_bytes();
    assert_eq!(
        a.deadline(),
        Some(idle_from + Duration::from_secs(15)),
        "the next request's headers are due from its first byte"
    );
}

/// A gRPC connection on 127.0.0.1 and its client end.
async fn pair() -> (Conn, TcpStream) {
    pair_of(Protocol::Grpc).await
}

async fn pair_of(protocol: Protocol) -> (Conn, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let permit = Arc::new(tokio::sync::Semaphore::new(1))
        .acquire_owned()
        .await
        .unwrap();
    (
        Conn::new(Io::Plain(server), limits(protocol), permit),
        client,
    )
}

/// The server answers and closes; the client acknowledges after the server's FIN (as an HTTP/2
/// client acknowledges the response's data). The server reads that before it closes, so the client
/// sees an orderly end, not a reset that could destroy the answer it has not read yet.
#[tokio::test]
async fn a_closing_connection_reads_what_the_client_still_sends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut conn, mut client) = pair().await;
    let server = tokio::spawn(async move {
        conn.write_all(b"answer").await.unwrap();
        conn.shutdown().await.unwrap();
        Instant::now()
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"answer");
    client.write_all(b"late acknowledgement").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut more = [0u8; 16];
    assert_eq!(
        client.read(&mut more).await.unwrap(),
        0,
        "an orderly end, no reset"
    );
    let closed = Instant::now();
    drop(client);
    let done = server.await.unwrap();
    assert!(
        done >= closed,
        "the server lingered until the client closed"
    );
    assert!(done - closed < LINGER_QUIET, "and no longer");
}

/// A client that neither sends nor closes holds a closing connection for one quiet spell only.
#[tokio::test(start_paused = true)]
async fn a_silent_client_holds_a_closing_connection_for_one_quiet_spell() {
    use tokio::io::AsyncWriteExt;
    let (mut conn, _client) = pair().await;
    let start = Instant::now();
    conn.shutdown().await.unwrap();
    assert_eq!(start.elapsed(), LINGER_QUIET);
}

/// A request that outlasts the idle limit, then an idle connection: closed one idle limit after the
/// request ended, by its own timer, though nothing woke its reader when it turned idle.
#[tokio::test(start_paused = true)]
async fn the_idle_deadline_starts_when_a_long_request_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut conn, mut client) = pair_of(Protocol::Http).await;
    let activity = conn.activity().clone();
    client.write_all(b"GET").await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(conn.read(&mut buf).await.unwrap(), 3);
    let busy = activity.begin();
    // The reader hyper keeps on a connection whose request is in the handler.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let result = conn.read(&mut buf).await.map_err(|e| e.kind());
        (result, Instant::now())
    });
    tokio::time::advance(Duration::from_secs(150)).await;
    tokio::task::yield_now().await;
    assert!(!reader.is_finished(), "busy: no deadline");
    drop(busy);
    let idle_from = Instant::now();
    let (result, closed) = tokio::time::timeout(Duration::from_secs(600), reader)
        .await
        .expect("the idle connection was closed")
        .unwrap();
    assert_eq!(result, Err(io::ErrorKind::TimedOut));
    assert_eq!(closed, idle_from + Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn grpc_needs_only_its_first_bytes_in_time() {
    let a = Activity::new(limits(Protocol::Grpc));
    assert!(a.deadline().is_some());
    a.on_bytes();
    assert_eq!(a.deadline(), None);
}
