use super::*;
use crate::metrics::Metrics;
use crate::tensor::TensorData;

fn request(rows: usize) -> Vec<Tensor> {
    vec![Tensor {
        name: "x".into(),
        shape: vec![rows, 2],
        data: TensorData::Fp32(vec![0.5; rows * 2]),
    }]
}

fn scheduler(config: &DynamicBatching) -> (Scheduler, Queue, Arc<VersionMetrics>) {
    let metrics = Arc::new(Metrics::new().version("m", 1, "tract"));
    let (s, rx) = Scheduler::new(config, metrics.clone());
    (s, rx, metrics)
}

/// With no instance pulling, a request times out after exactly its timeout (paused clock), and the
/// queued entry it leaves behind is skipped rather than computed.
#[tokio::test(start_paused = true)]
async fn timeouts_fire_on_time_and_expired_requests_are_skipped() {
    let (s, rx, metrics) = scheduler(&DynamicBatching::default());
    let start = tokio::time::Instant::now();
    let err = s
        .submit(request(1), 1, Some(Duration::from_millis(250)))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(metrics.queue_depth.get(), 1);
    drop(s);
    let policy = BatchPolicy {
        max_batch_size: 8,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: vec![],
    };
    let mut source = BatchSource::new(rx, policy, metrics.clone());
    assert!(
        source.next_batch().is_none(),
        "the expired request is dropped, nothing runs"
    );
    assert_eq!(metrics.queue_depth.get(), 0);
}

fn pending(rows: usize, width: usize) -> (Pending, oneshot::Receiver<Result<Executed>>) {
    let (reply, answer) = oneshot::channel();
    let data = TensorData::Fp32(vec![0.0; rows * width]);
    let inputs = vec![Tensor {
        name: "x".into(),
        shape: vec![rows, width],
        data,
    }];
    (
        Pending {
            inputs,
            rows,
            enqueued: Instant::now(),
            deadline: None,
            reply,
            warmup: false,
            slot: Slot::take(&Arc::new(AtomicUsize::new(0)), 1).unwrap(),
        },
        answer,
    )
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let config = DynamicBatching {
        max_queue_size: 1,
        ..DynamicBatching::default()
    };
    let (s, _rx, _) = scheduler(&config);
    let (waiting, _answer) = pending(1, 2);
    s.queue.try_send(waiting).unwrap();
    let err = s.submit(request(1), 1, None).await.err().unwrap();
    assert!(matches!(err, Error::Overloaded(_)), "{err}");
}

/// Triton's accounting: a request an instance holds while it waits to fill a batch still counts
/// against `max_queue_size`; it stops counting once its batch executes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_while_a_batch_forms_count_against_max_queue_size() {
    let config = DynamicBatching {
        max_queue_size: 1,
        ..DynamicBatching::default()
    };
    let (s, rx, metrics) = scheduler(&config);
    let s = Arc::new(s);
    let policy = BatchPolicy {
        max_batch_size: 8,
        max_queue_delay: Duration::from_millis(500),
        preferred_batch_sizes: vec![],
    };
    let former_metrics = metrics.clone();
    let former = std::thread::spawn(move || {
        let mut source = BatchSource::new(rx, policy, former_metrics);
        source.next_batch().map(|batch| batch.len())
    });
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.submit(request(1), 1, None).await }
    });
    // Wait until the instance has taken it off the channel and is waiting for more.
    while metrics.queue_depth.get() != 0 || s.waiting.load(Ordering::Acquire) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = s.submit(request(1), 1, None).await.err().unwrap();
    assert!(matches!(err, Error::Overloaded(_)), "{err}");
    assert_eq!(
        former.join().unwrap(),
        Some(1),
        "the batch ran with the first alone"
    );
    assert_eq!(
        s.waiting.load(Ordering::Acquire),
        0,
        "executing: no longer queued"
    );
    // The batch was dropped without an answer (no instance ran it): the first request hears so.
    assert!(first.await.unwrap().is_err());
}

/// Answers each request with its own inputs.
struct Echo(Arc<AtomicUsize>);

impl crate::backend::Backend for Echo {
    fn infer(&mut self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, crate::stats::Phases)> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok((inputs.to_vec(), crate::stats::Phases::default()))
    }
}

/// The direct runs of a version whose one session is an [`Echo`] counting its calls, known to be
/// cheap, computing batches of up to `max_batch_size` rows.
fn echo_direct(
    queue: &Queue,
    metrics: &Arc<VersionMetrics>,
    max_batch_size: usize,
) -> (Direct, Arc<AtomicUsize>) {
    let spec = Arc::new(crate::instance::InstanceSpec {
        label: "m-1".into(),
        kind: crate::backend::BackendKind::Tract,
        path: std::path::PathBuf::new(),
        signature: crate::signature::Signature {
            inputs: vec![],
            outputs: vec![],
            max_batch_size: u32::try_from(max_batch_size).unwrap(),
        },
        config: crate::model_toml::ModelToml::default(),
        policy: BatchPolicy {
            max_batch_size,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: vec![],
        },
        stats: Arc::default(),
        metrics: metrics.clone(),
        cost: crate::direct::Cost::default(),
    });
    spec.cost.observe(Duration::from_micros(1), 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let session: crate::instance::Session =
        Arc::new(std::sync::Mutex::new(Some(Box::new(Echo(calls.clone())))));
    let direct = Direct::new(vec![session], spec, 50, queue.clone()).unwrap();
    (direct, calls)
}

/// A relaying request computes `LEAD_BATCHES` batches and then says work is left (its caller yields
/// and looks again, or rings) rather than computing on; the next look takes the rest. Each request
/// gets its own rows back.
#[tokio::test]
async fn a_relay_computes_its_batches_then_says_what_is_left() {
    use crate::direct::{LEAD_BATCHES, Lead};
    let config = DynamicBatching {
        max_queue_size: 64,
        ..DynamicBatching::default()
    };
    let (s, queue, metrics) = scheduler(&config);
    let (direct, calls) = echo_direct(&queue, &metrics, 2);
    // Ten one-row requests in batches of two: four batches take eight.
    let mut answers = Vec::new();
    for i in 0..10 {
        let (mut p, answer) = pending(1, 2);
        p.inputs[0].data = TensorData::Fp32(vec![i as f32; 2]);
        s.queue.try_send(p).unwrap();
        metrics.queue_depth.inc();
        answers.push(answer);
    }
    assert_eq!(direct.lead(1, crate::gather::lane(), &s.queue), Lead::Left);
    assert_eq!(calls.load(Ordering::Relaxed), LEAD_BATCHES);
    assert!(direct.pending(crate::gather::lane()));
    assert_eq!(direct.lead(1, crate::gather::lane(), &s.queue), Lead::Done);
    assert_eq!(calls.load(Ordering::Relaxed), 5);
    assert!(!direct.pending(crate::gather::lane()));
    for (i, answer) in answers.into_iter().enumerate() {
        let executed = answer.await.unwrap().unwrap();
        assert_eq!(
            executed.outputs[0].data,
            TensorData::Fp32(vec![i as f32; 2])
        );
        // The backend borrowed the batch: each request has its own inputs back, for the log.
        assert_eq!(executed.inputs[0].shape[0], 1);
        assert_eq!(executed.inputs[0].data, TensorData::Fp32(vec![i as f32; 2]));
    }
    assert_eq!(metrics.queue_depth.get(), 0);
    // A lone request run directly has its inputs back too.
    let (p, _) = pending(1, 2);
    let sent = p.inputs.clone();
    let Ok(Ok(executed)) = direct.try_run(p.inputs, 1) else {
        panic!("a direct run")
    };
    assert_eq!(executed.inputs, sent);
}

/// A request relaying the queue takes batches of what is there without waiting, up to the rows it may
/// compute; a larger request goes back to the queue unclaimed (its timeout still runs) for an
/// instance thread.
#[test]
fn relaying_takes_what_fits_and_leaves_larger_requests_queued() {
    let config = DynamicBatching {
        max_queue_size: 16,
        ..DynamicBatching::default()
    };
    let (s, queue, metrics) = scheduler(&config);
    assert!(queue.bell.is_some(), "no max_queue_delay: relayed");
    let mut answers = Vec::new();
    for rows in [2, 3, 9, 1] {
        let (p, answer) = pending(rows, 2);
        s.queue.try_send(p).unwrap();
        metrics.queue_depth.inc();
        answers.push(answer);
    }
    let policy = BatchPolicy {
        max_batch_size: 64,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: vec![],
    };
    let relay = Queue {
        bell: None,
        ..queue.clone()
    };
    let mut source = BatchSource::new(relay, policy.clone(), metrics.clone());
    let rows = |now: Now| match now {
        Now::Batch(b) => b.iter().map(|p| p.rows).collect::<Vec<_>>(),
        Now::Empty => vec![],
        Now::TooLarge => vec![usize::MAX],
    };
    // 2 + 3 fit in 8; 9 does not fit at all: it goes back, behind 1, and again when it comes first.
    assert_eq!(rows(source.next_batch_now(8, &s.queue)), vec![2, 3]);
    assert_eq!(rows(source.next_batch_now(8, &s.queue)), vec![1]);
    assert_eq!(rows(source.next_batch_now(8, &s.queue)), vec![usize::MAX]);
    assert!(!source.carrying());
    assert_eq!(metrics.queue_depth.get(), 1);
    assert!(!source.is_empty());
    // An instance thread, no limit but the batch size, takes it.
    let mut instance = BatchSource::new(queue, policy, metrics.clone());
    let batch = instance.next_batch().unwrap();
    assert_eq!(batch.iter().map(|p| p.rows).collect::<Vec<_>>(), vec![9]);
    assert!(source.is_empty());
    assert_eq!(metrics.queue_depth.get(), 0);
}

#[test]
fn batches_respect_row_limits_shapes_and_preferred_sizes() {
    let config = DynamicBatching {
        max_queue_size: 16,
        ..DynamicBatching::default()
    };
    let (s, rx, metrics) = scheduler(&config);
    let mut answers = Vec::new();
    // 3 + 4 fit in 8 rows; 2 more would not; width 3 cannot join width 2; 2 + 4 hits preferred 6.
    for (rows, width) in [(3, 2), (4, 2), (2, 2), (1, 3), (2, 2), (4, 2), (1, 2)] {
        let (p, answer) = pending(rows, width);
        s.queue.try_send(p).unwrap();
        metrics.queue_depth.inc();
        answers.push(answer);
    }
    let policy = BatchPolicy {
        max_batch_size: 8,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: vec![6],
    };
    let mut source = BatchSource::new(rx, policy, metrics.clone());
    let mut sizes = || {
        source
            .next_batch()
            .map(|b| b.iter().map(|p| p.rows).collect::<Vec<_>>())
    };
    assert_eq!(sizes(), Some(vec![3, 4]));
    assert_eq!(sizes(), Some(vec![2]));
    assert_eq!(sizes(), Some(vec![1]));
    assert_eq!(sizes(), Some(vec![2, 4]));
    assert_eq!(sizes(), Some(vec![1]));
    drop(s);
    assert_eq!(sizes(), None);
    assert_eq!(metrics.queue_depth.get(), 0);
}

/// Requests queued while another on their thread gathers leave the relay to it: it computes them
/// in its batch. A gatherer whose client leaves before it relays strands nobody: the next request
/// gathers and computes what is queued (an instance thread would be rung, too).
#[tokio::test]
async fn requests_queued_while_one_gathers_join_its_batch() {
    use std::future::{Future, poll_fn};
    use std::task::Poll;

    let (s, queue, metrics) = scheduler(&DynamicBatching::default());
    let (direct, calls) = echo_direct(&queue, &metrics, 8);
    s.enable_direct(direct);
    // Other requests in flight: none runs directly, each takes the queue.
    metrics.inflight.set(3);
    let submit = |value: f32, rows: usize| {
        let mut inputs = request(rows);
        inputs[0].data = TensorData::Fp32(vec![value; rows * 2]);
        s.submit(inputs, rows, None)
    };
    let own = |executed: Result<Executed>, value: f32, rows: usize| {
        let executed = executed.unwrap();
        assert_eq!(
            executed.outputs[0].data,
            TensorData::Fp32(vec![value; rows * 2])
        );
        assert_eq!(executed.batch_requests, 3);
    };
    let (a, b, c) = tokio::join!(submit(1.0, 1), submit(2.0, 2), submit(3.0, 3));
    assert_eq!(calls.load(Ordering::Relaxed), 1, "one batch");
    own(a, 1.0, 1);
    own(b, 2.0, 2);
    own(c, 3.0, 3);

    /// Polls `call` once; true when it is still pending.
    async fn poll_once<F: Future>(mut call: std::pin::Pin<&mut F>) -> bool {
        poll_fn(move |cx| Poll::Ready(call.as_mut().poll(cx).is_pending())).await
    }
    // Queued, and gathering.
    // Boxed, so that dropping it drops the call.
    let mut left = Box::pin(submit(4.0, 1));
    assert!(poll_once(left.as_mut()).await);
    let mut waiting = std::pin::pin!(submit(5.0, 2));
    assert!(poll_once(waiting.as_mut()).await);
    drop(left);
    // A stranded request would wait for ever: bounded, so the test fails instead.
    let (waiting, next) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(waiting, submit(6.0, 1))
    })
    .await
    .expect("the requests queued behind the left gatherer are computed");
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    let (waiting, next) = (waiting.unwrap(), next.unwrap());
    assert_eq!(waiting.outputs[0].data, TensorData::Fp32(vec![5.0; 4]));
    assert_eq!(next.outputs[0].data, TensorData::Fp32(vec![6.0; 2]));
    assert_eq!(waiting.batch_requests, 2, "the left request was skipped");
    assert_eq!(metrics.queue_depth.get(), 0);
}

/// Each thread's relayed requests queue in its own lane. A relay takes its own lane, then the shared
/// queue, then a lane whose gatherer is not coming (its flag is clear), never one whose gatherer is:
/// that gatherer computes its own thread's requests. An instance thread takes any lane.
#[test]
fn a_relay_takes_its_lane_and_leaves_a_gathered_lane_to_its_gatherer() {
    let config = DynamicBatching {
        max_queue_size: 64,
        ..DynamicBatching::default()
    };
    let (s, queue, metrics) = scheduler(&config);
    let lanes = queue.lanes.clone().expect("relayed: lanes");
    // Lanes apart, so the looks at the lanes that have held a request (a bit each) skip those between.
    let (mine, theirs, third) = (0, 5, 13);
    let mut answers = Vec::new();
    let mut put = |lane: Option<usize>, rows: usize| {
        let (p, answer) = pending(rows, 2);
        match lane {
            Some(lane) => assert!(lanes.queue(lane, p).is_ok()),
            None => s.queue.try_send(p).unwrap(),
        }
        metrics.queue_depth.inc();
        answers.push(answer);
    };
    put(Some(theirs), 1);
    put(Some(third), 2);
    put(None, 3);
    put(Some(mine), 4);
    // Their thread's gatherer is yielding for more: its lane is its own.
    let mut gatherer = lanes.start(theirs, None).expect("their lane's gatherer");
    assert!(lanes.start(theirs, None).is_none());
    let policy = BatchPolicy {
        max_batch_size: 1,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: vec![],
    };
    let relay_queue = Queue {
        bell: None,
        ..queue.clone()
    };
    let mut relay = BatchSource::relaying(relay_queue, mine, policy.clone(), metrics.clone());
    let next = |relay: &mut BatchSource| match relay.next_batch_now(8, &s.queue) {
        Now::Batch(b) => b.iter().map(|p| p.rows).collect::<Vec<_>>(),
        Now::Empty => vec![],
        Now::TooLarge => panic!("nothing is too large"),
    };
    // Its own lane, the shared queue, then the third lane, which no gatherer holds.
    assert_eq!(next(&mut relay), vec![4]);
    assert_eq!(next(&mut relay), vec![3]);
    assert_eq!(next(&mut relay), vec![2]);
    assert_eq!(
        next(&mut relay),
        Vec::<usize>::new(),
        "their lane waits for their gatherer"
    );
    assert!(relay.is_empty());
    assert_eq!(lanes.len(theirs), 1);
    // Once their gatherer has stopped gathering (and, say, found every session taken), a holder takes it.
    gatherer.stop();
    assert!(!relay.is_empty());
    assert_eq!(next(&mut relay), vec![1]);
    gatherer.relayed();
    // An instance thread takes any lane, whoever gathers it.
    put(Some(theirs), 5);
    let _again = lanes.start(theirs, None).expect("a new gatherer");
    let mut instance = BatchSource::new(queue, policy, metrics.clone());
    assert_eq!(
        instance
            .next_batch()
            .map(|b| b.iter().map(|p| p.rows).collect::<Vec<_>>()),
        Some(vec![5])
    );
    assert!(lanes.is_empty());
    assert_eq!(metrics.queue_depth.get(), 0);
}

/// A lane holds a bounded number of requests: it gives the next one back, and the scheduler queues that
/// one in the shared queue, which every relay reads.
#[test]
fn a_lane_gives_back_requests_past_its_bound() {
    let (_s, queue, _metrics) = scheduler(&DynamicBatching::default());
    let lanes = queue.lanes.clone().unwrap();
    let mut held = Vec::new();
    let refused = (0..10_000)
        .find_map(|_| {
            let (p, answer) = pending(1, 2);
            held.push(answer);
            lanes.queue(3, p).err()
        })
        .expect("a lane is bounded");
    assert_eq!(refused.rows, 1);
    assert_eq!(lanes.len(3), held.len() - 1);
    assert!(
        lanes.len(3) >= 16,
        "a lane holds a worker's share of connections"
    );
}
