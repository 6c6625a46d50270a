//! Tests of the sidecar client against a real `keel monitor` sidecar service and real sockets.

use super::*;
use keel_monitor::FeatureValue;
use prometheus::Opts;

fn record(row: u32, width: usize) -> PredictionRecord {
    PredictionRecord {
        model: "m".into(),
        version: 1,
        request_id: "r".into(),
        row,
        timestamp_ms: 0,
        inputs: vec![("x".into(), vec![FeatureValue::Number(1.0); width])],
        outputs: Vec::new(),
    }
}

fn dropped() -> IntCounterVec {
    IntCounterVec::new(Opts::new("dropped", "rows"), &["model", "reason"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_sent_or_counted_and_the_queue_is_bounded_in_bytes() {
    let dropped = dropped();
    // Nothing listens there: the task backs off and counts what it discards.
    let token = ClientToken {
        token: None,
        file: None,
    };
    let (handle, task) = SidecarHandle::start("http://127.0.0.1:1".into(), token, dropped.clone());
    // A row over the sidecar's 16 MiB limit even alone, and 3,000 rows of 20,000 numbers
    // (about 480 MB encoded): far over the queue's byte bound.
    let too_large = vec![record(0, MAX_SENT_MESSAGE_BYTES / 8 + 16)];
    handle.records(&too_large, &dropped);
    let mut rows = 0u64;
    for _ in 0..30 {
        let batch: Vec<PredictionRecord> = (0..100).map(|i| record(i, 20_000)).collect();
        handle.records(&batch, &dropped);
        rows += 100;
        assert!(handle.queued_bytes() <= QUEUE_BYTES);
    }
    let count = |why: &str| dropped.with_label_values(&["m", why]).get();
    assert_eq!(count(reason::TOO_LARGE), 1);
    assert!(count(reason::SIDECAR_UNAVAILABLE) >= rows - (QUEUE_BYTES / 160_000) as u64);
    drop(handle);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        count(reason::SIDECAR_UNAVAILABLE) + count(reason::SHUTDOWN),
        rows
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_left_when_the_task_is_stopped_are_counted() {
    let dropped = dropped();
    let (tx, rx) = mpsc::channel(8);
    let queue = Queue {
        rx,
        dropped: dropped.clone(),
    };
    let queued = Arc::new(AtomicUsize::new(0));
    let records = [record(0, 10), record(1, 10)];
    let chunked = records_messages(&records, CHUNK_BYTES, usize::MAX);
    for chunk in chunked.chunks {
        let outgoing = Outgoing::new(chunk.message, chunk.bytes, &queued).unwrap();
        tx.try_send(outgoing).unwrap();
    }
    assert!(queued.load(Ordering::Acquire) > 0);
    drop(queue);
    assert_eq!(dropped.with_label_values(&["m", reason::SHUTDOWN]).get(), 2);
    assert_eq!(
        queued.load(Ordering::Acquire),
        0,
        "their bytes are given back"
    );
    // And those tonic had not taken from a broken stream.
    let (tx, rx) = mpsc::channel(8);
    let outbound = Outbound {
        rx,
        dropped: dropped.clone(),
    };
    let message = records_messages(&[record(0, 10)], CHUNK_BYTES, usize::MAX)
        .chunks
        .remove(0);
    tx.try_send(Outgoing::new(message.message, message.bytes, &queued).unwrap())
        .unwrap();
    drop(outbound);
    let unavailable = dropped.with_label_values(&["m", reason::SIDECAR_UNAVAILABLE]);
    assert_eq!(unavailable.get(), 1);
}

/// A TCP relay to the sidecar whose connections can be cut while the sidecar stays up: the
/// stream breaks, the sidecar keeps its state.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let accepting = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !accepting.load(Ordering::Acquire) {
                    continue; // dropped: refused while down
                }
                let mut cuts = cuts.clone();
                // Only cuts from now on end this connection.
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Relay { addr, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        if !up {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retirement_sent_while_the_stream_is_down_reaches_a_sidecar_that_stayed_up() {
    use keel_monitor::sidecar::{Sidecar, SidecarConfig};
    use keel_monitor::{ModelSpec, MonitorSettings};

    let sidecar = Sidecar::start(SidecarConfig::local()).await.unwrap();
    let relay = Relay::start(sidecar.grpc_addr()).await;
    let token = ClientToken {
        token: None,
        file: None,
    };
    let (handle, _task) = SidecarHandle::start(format!("http://{}", relay.addr), token, dropped());
    let spec = |version| ModelSpec {
        model: "m".into(),
        version,
        baseline: None,
        settings: MonitorSettings::default(),
    };
    let monitored = || sidecar.monitor().versions();
    let wait_for = |want: Vec<(String, u64)>| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while monitored() != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} != {want:?}",
                monitored()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    handle.version(&spec(1));
    handle.version(&spec(2));
    wait_for(vec![("m".into(), 1), ("m".into(), 2)]).await;

    relay.set_up(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.retire("m", 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.set_up(true);
    wait_for(vec![("m".into(), 2)]).await;
}
