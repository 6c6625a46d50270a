//! The scheduler end to end on real servers: batching correctness under concurrency, overload, timeouts,
//! cancelled clients, draining on shutdown, and the metrics that count all of it.
//!
//! The tests are here, at the crate root (their names are what `cargo test` prints); the slow MLP's
//! requests in mlp.rs, what the tests read back in observe.rs.

#[path = "../common/mod.rs"]
mod common;
mod mlp;
mod observe;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{TempRepo, TestServer, breast_cancer_rows, workspace};
use serde_json::{Value, json};

use mlp::{fill_the_queue, mlp_request, post_mlp, slow_mlp, spawn_mlp};
use observe::{assert_same_answer, metric, scrape, sleeps_of_threads, stats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_each_gets_its_own_rows() {
    let _shared = observe::CORES.read().await;
    let lr = workspace().join("models/breast-cancer/2/model.onnx");
    let repo = TempRepo::new(
        "batching",
        &[
            (
                "batched",
                &lr,
                "[dynamic_batching]\nmax_queue_delay_us = 3000\n",
            ),
            ("alone", &lr, "max_batch_size = 0\n"),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    let rows = breast_cancer_rows(100);
    let request = |offset: usize, n: usize| {
        json!({ "id": format!("{offset}-{n}"),
                "inputs": [{ "name": "input", "shape": [n, 30], "datatype": "FP32", "data": rows[offset * 30..(offset + n) * 30] }] })
    };
    let mut tasks = Vec::new();
    for i in 0..120usize {
        let (offset, n) = (i % 60, 1 + i % 7);
        let body = request(offset, n);
        let (client, base) = (s.client.clone(), s.base.clone());
        tasks.push(tokio::spawn(async move {
            let batched: Value = client
                .post(format!("{base}/v2/models/batched/infer"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let alone: Value = client
                .post(format!("{base}/v2/models/alone/infer"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (body["id"].clone(), batched, alone)
        }));
    }
    for task in tasks {
        let (id, batched, alone) = task.await.unwrap();
        assert_same_answer(&id, &batched, &alone);
    }
    let st = stats(&s, "batched").await;
    let executions = st["execution_count"].as_u64().unwrap();
    assert_eq!(st["inference_stats"]["success"]["count"], 120);
    assert!(
        executions < 120,
        "requests were batched: {executions} executions for 120 requests"
    );
    let text = scrape(&s).await;
    let batches = metric(
        &text,
        "keel_batch_rows_count{model=\"batched\",version=\"1\"}",
    );
    let batch_rows = metric(
        &text,
        "keel_batch_rows_sum{model=\"batched\",version=\"1\"}",
    );
    assert_eq!(batches as u64, executions);
    assert_eq!(batch_rows as u64, st["inference_count"].as_u64().unwrap());
    s.server.shutdown().await.unwrap();
}

/// Requests that find the queue full are answered 429 at once, while the batches before them still
/// compute, and each is counted. The queue is filled on purpose rather than by a burst: a burst of
/// large requests reaches a fast box one by one and may never overflow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_at_once() {
    let _shared = observe::CORES.read().await;
    let model = slow_mlp();
    let repo = TempRepo::new(
        "overload",
        &[(
            "mlp",
            &model,
            "instances = 1\n[dynamic_batching]\nmax_queue_size = 2\n",
        )],
    );
    let s = TestServer::start(&repo.root).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        // One batch computing, two queued: the queue is full.
        let (blockers, _) = fill_the_queue(&s, "mlp").await;
        let (status, _) = post_mlp(&s, "mlp", 1, Value::Null).await;
        let answered_first = !blockers.iter().all(|b| b.is_finished());
        codes.push(status);
        for blocker in blockers {
            codes.push(blocker.await.unwrap().unwrap());
        }
        // The batches ahead of it take tens of milliseconds more: a 429 does not wait for them. A probe
        // that slipped in as a blocker finished was queued and served; the round is tried again.
        if status == 429 {
            assert!(answered_first, "the 429 waited for the batches ahead of it");
            break;
        }
    }
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    assert!(codes.contains(&429) && codes.contains(&200), "{codes:?}");
    let text = scrape(&s).await;
    let overloaded = metric(
        &text,
        "keel_inference_requests_total{model=\"mlp\",outcome=\"overloaded\",protocol=\"http\",version=\"1\"}",
    );
    assert_eq!(
        overloaded as usize,
        codes.iter().filter(|c| **c == 429).count()
    );
    // Once the queue drains, it serves again.
    assert_eq!(post_mlp(&s, "mlp", 1, Value::Null).await.0, 200);
    s.server.shutdown().await.unwrap();
}

/// While an instance is busy with long batches, a request with a short timeout is answered with a timeout
/// error, and is never computed: the statistics count only the long batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_abandoned_requests_never_reach_the_backend() {
    let _shared = observe::CORES.read().await;
    let model = slow_mlp();
    let repo = TempRepo::new(
        "timeouts",
        &[
            ("mlp", &model, "max_batch_size = 1024\ninstances = 1\n"),
            (
                "mlp-default",
                &model,
                "instances = 1\n[dynamic_batching]\ndefault_timeout_us = 5000\n",
            ),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    for (model, params) in [
        ("mlp", json!({ "timeout": 5000 })),
        ("mlp-default", Value::Null),
    ] {
        // Two whole batches (tens of milliseconds each here) stand before the requests below: a full
        // batch takes no company, so neither is claimed before then.
        let (blockers, started) = fill_the_queue(&s, model).await;
        let (status, err) = post_mlp(&s, model, 1, params.clone()).await;
        assert_eq!(status, 503, "{err}");
        assert!(
            err["error"].as_str().unwrap().contains("timed out"),
            "{err}"
        );
        // A client that gives up while queued (well within the request's own timeout): its request is
        // dropped, not computed.
        let (body, json_len) = mlp_request(1, json!({ "timeout": 60_000_000 }));
        let abandoned = s
            .client
            .post(s.url(&format!("/v2/models/{model}/infer")))
            .header("Inference-Header-Content-Length", json_len)
            .body(body)
            .timeout(Duration::from_millis(10))
            .send()
            .await;
        assert!(abandoned.is_err(), "the client timed out");
        for blocker in blockers {
            assert_eq!(blocker.await.unwrap().unwrap(), 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = stats(&s, model).await;
        assert_eq!(
            st["inference_count"],
            1024 * started,
            "{model}: only the blockers ran: {st}"
        );
        assert_eq!(st["execution_count"], started, "{model}: {st}");
        let text = scrape(&s).await;
        let labels = |outcome: &str| {
            format!(
                "keel_inference_requests_total{{model=\"{model}\",outcome=\"{outcome}\",protocol=\"http\",version=\"1\"}}"
            )
        };
        assert_eq!(metric(&text, &labels("timeout")), 1.0, "{model}");
        assert_eq!(metric(&text, &labels("cancelled")), 1.0, "{model}");
        assert_eq!(metric(&text, &labels("success")), started as f64, "{model}");
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_queued_requests() {
    let _shared = observe::CORES.read().await;
    let model = slow_mlp();
    let repo = TempRepo::new("drain", &[("mlp", &model, "max_batch_size = 1024\n")]);
    let s = TestServer::start(&repo.root).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(spawn_mlp(&s, "mlp", 1024, Value::Null));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = scrape(&s).await;
    assert!(
        metric(&text, "keel_inflight_requests{model=\"mlp\",version=\"1\"}") >= 2.0,
        "{text}"
    );
    s.server.shutdown().await.unwrap();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_unbatched_models_serve() {
    let _shared = observe::CORES.read().await;
    let model = slow_mlp();
    let repo = TempRepo::new(
        "instances",
        &[
            (
                "three",
                &model,
                "instances = 3\n[onnxruntime]\nintra_op_threads = 1\n",
            ),
            ("unbatched", &model, "max_batch_size = 0\n"),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    let (_, config) = s.get("/v2/models/three/config").await;
    assert_eq!(config["instance_group"][0]["count"], 3);
    let (_, config) = s.get("/v2/models/unbatched/config").await;
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(config["input"][0]["dims"], json!([-1, 512]));
    let mut tasks = Vec::new();
    for model in ["three", "three", "three", "unbatched", "unbatched"] {
        tasks.push(spawn_mlp(&s, model, 16, Value::Null));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    s.server.shutdown().await.unwrap();
}

/// A lone request runs on an idle instance's session at once (no queue hop: its queue time is exactly
/// zero) once the version has measured its cost, a cheap model's on its async worker; an expensive
/// model's, far above `direct_run_max_us`, or one with `max_queue_delay`, still goes through the queue.
/// Concurrent requests batching is covered above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_skips_the_queue_once_its_cost_is_known() {
    let _shared = observe::CORES.read().await;
    let cheap = workspace().join("models/breast-cancer/1/model.onnx");
    let repo = TempRepo::new(
        "direct",
        &[
            // A debug build runs even this model for ~200 µs: raise the limit so the test shows the
            // mechanism, not this build's speed.
            (
                "cheap",
                &cheap,
                "[dynamic_batching]\ndirect_run_max_us = 100000\n",
            ),
            (
                "waits",
                &cheap,
                "[dynamic_batching]\nmax_queue_delay_us = 100\ndirect_run_max_us = 100000\n",
            ),
            ("heavy", &slow_mlp(), ""),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    let round = |n: usize| {
        let s = &s;
        async move {
            for _ in 0..n {
                for model in ["cheap", "waits"] {
                    let (status, body) = s
                        .post_json(&format!("/v2/models/{model}/infer"), &common::infer_body(1))
                        .await;
                    assert_eq!(status, 200, "{body}");
                }
                // 64 rows of the MLP take milliseconds: far above the default limit.
                assert_eq!(post_mlp(s, "heavy", 64, Value::Null).await.0, 200);
            }
        }
    };
    let queued = |st: &Value| st["inference_stats"]["queue"]["ns"].as_u64().unwrap();
    // The first runs measure the cost (a first run is slow while the backend sizes its buffers).
    round(20).await;
    let mut before = Vec::new();
    for model in ["cheap", "waits", "heavy"] {
        before.push(queued(&stats(&s, model).await));
    }
    round(10).await;
    for ((model, direct), before) in [("cheap", true), ("waits", false), ("heavy", false)]
        .into_iter()
        .zip(before)
    {
        let st = stats(&s, model).await;
        assert_eq!(st["inference_stats"]["queue"]["count"], 30, "{model}: {st}");
        assert_eq!(st["execution_count"], 30, "{model}: {st}");
        let waited = queued(&st) - before;
        assert_eq!(waited == 0, direct, "{model}: {waited} ns in the queue");
    }
    s.server.shutdown().await.unwrap();
}

/// A lone request expected to compute longer than `direct_run_max_us` (but within 20 times that) runs
/// directly only after handing its async worker's other tasks to another thread: with a single worker,
/// requests on other connections are answered while it computes. (Computing on the worker as it is
/// would stall them all until it ends.) The request's rows are chosen from the compute time measured on
/// this machine, so that it is expected to take about 5 times `direct_run_max_us` here: a fixed size ran
/// under the limit, on the worker as it is, on a fast machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_costly_lone_request_stalls_no_other_connection() {
    let _shared = observe::CORES.read().await;
    let repo = TempRepo::new(
        "in_place",
        &[
            // 64 rows (a few ms) on the worker as it is; about 100 ms handed over (in place up to
            // 20 x 20 ms).
            (
                "heavy",
                &slow_mlp(),
                "[dynamic_batching]\ndirect_run_max_us = 20000\n",
            ),
            (
                "cheap",
                &workspace().join("models/breast-cancer/1/model.onnx"),
                "",
            ),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    let body = common::infer_body(1);
    let cheap = || s.post_json("/v2/models/cheap/infer", &body);
    // Learn the MLP's cost, so that its lone requests run directly.
    for _ in 0..5 {
        assert_eq!(post_mlp(&s, "heavy", 64, Value::Null).await.0, 200);
    }
    let before = stats(&s, "heavy").await;
    let ns = |st: &Value, phase: &str| st["inference_stats"][phase]["ns"].as_u64().unwrap();
    let per_row = (ns(&before, "compute_infer") / (5 * 64)).max(1);
    let rows = (Duration::from_millis(100).as_nanos() as u64 / per_row).clamp(256, 1024) as usize;
    let heavy = spawn_mlp(&s, "heavy", rows, Value::Null);
    // The longest wait for an answer on the other connection while the MLP request is in flight.
    let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
    while !heavy.is_finished() {
        let (status, body) = cheap().await;
        assert_eq!(status, 200, "{body}");
        longest = longest.max(last.elapsed());
        last = Instant::now();
    }
    assert_eq!(heavy.await.unwrap().unwrap(), 200);
    let after = stats(&s, "heavy").await;
    assert_eq!(ns(&after, "queue"), ns(&before, "queue"), "it ran directly");
    let computed = Duration::from_nanos(ns(&after, "compute_infer") - ns(&before, "compute_infer"));
    assert!(
        computed > Duration::from_millis(20),
        "{computed:?}: too short to tell"
    );
    // Computing on the worker as it is, the other connection waits the whole compute and more.
    assert!(
        longest < computed / 2,
        "another connection waited {longest:?} during {computed:?} of compute"
    );
    s.server.shutdown().await.unwrap();
}

/// Under concurrency a cheap model's queue is relayed: requests compute the queued batches themselves,
/// so the instance threads are not woken for each batch (they sleep on their doorbell); batches still
/// form, and each request still gets exactly its own rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_relays_the_queue_without_waking_the_instances() {
    let _alone = observe::CORES.write().await;
    let lr = workspace().join("models/breast-cancer/2/model.onnx");
    let repo = TempRepo::new(
        "relay",
        &[
            // A debug build computes even this model slowly: raise the limit (see the test above).
            ("r", &lr, "[dynamic_batching]\ndirect_run_max_us = 100000\n"),
            ("alone", &lr, "max_batch_size = 0\n"),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    let rows = breast_cancer_rows(100);
    let request = |offset: usize, n: usize| {
        json!({ "id": format!("{offset}-{n}"),
                "inputs": [{ "name": "input", "shape": [n, 30], "datatype": "FP32", "data": rows[offset * 30..(offset + n) * 30] }] })
    };
    // The version learns its cost from its first batches.
    for i in 0..10 {
        let (status, body) = s.post_json("/v2/models/r/infer", &request(i, 1)).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut expected = Vec::new();
    for i in 0..200usize {
        let body = request(i % 60, 1 + i % 7);
        let (status, alone) = s.post_json("/v2/models/alone/infer", &body).await;
        assert_eq!(status, 200, "{alone}");
        expected.push((body, alone));
    }
    // Each burst writes all its requests' heads, one per open keep-alive connection, then all their
    // bodies, and only then reads the answers. A handler that has its head waits for its body, so the
    // requests are in flight together however the connection threads get the CPU: a client whose
    // requests went out one by one (reqwest's) was, on a fast build or a box loaded by the other
    // tests, answered as fast as it sent, each request alone, and a burst never met a crowd. Requests
    // whose connection threads take turns on one core still come alone (and are right to run
    // directly), so the test has the cores to itself ([`observe::CORES`]), and up to five bursts are
    // tried.
    let mut conns = Vec::new();
    for _ in 0..expected.len() {
        let conn = tokio::net::TcpStream::connect(s.server.http_addr())
            .await
            .unwrap();
        conn.set_nodelay(true).unwrap();
        conns.push(conn);
    }
    let bodies: Vec<String> = expected.iter().map(|(body, _)| body.to_string()).collect();
    let mut bursts = 0;
    let (executions, woken) = loop {
        bursts += 1;
        let before = stats(&s, "r").await["execution_count"].as_u64().unwrap();
        let slept = sleeps_of_threads("keel-r-1-");
        for (conn, body) in conns.iter_mut().zip(&bodies) {
            let head = format!(
                "POST /v2/models/r/infer HTTP/1.1\r\nhost: keel\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await.unwrap();
        }
        for (conn, body) in conns.iter_mut().zip(&bodies) {
            conn.write_all(body.as_bytes()).await.unwrap();
        }
        for (conn, (body, alone)) in conns.iter_mut().zip(&expected) {
            let (status, got) = read_response(conn).await;
            assert_eq!(status, 200, "{got}");
            assert_same_answer(&body["id"], &got, alone);
        }
        let executions = stats(&s, "r").await["execution_count"].as_u64().unwrap() - before;
        let woken = sleeps_of_threads("keel-r-1-") - slept;
        if executions < 200 || bursts == 5 {
            break (executions, woken);
        }
    };
    assert!(
        executions < 200,
        "batched: {executions} batches in burst {bursts}"
    );
    // A thread blocked on the queue itself sleeps and wakes once per batch at least.
    assert!(
        woken * 4 < executions,
        "instance threads slept {woken} times for {executions} batches"
    );
    s.server.shutdown().await.unwrap();
}

/// The client's deadline (`grpc-timeout`) ends a gRPC call on the server: DEADLINE_EXCEEDED naming it,
/// with no `--request-timeout` to cut it first. Sent over a bare HTTP/2 connection, since gRPC clients
/// also enforce their deadline themselves and would answer first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_ends_at_the_clients_deadline() {
    use keel_server::grpc::pb;
    use prost::Message;

    let _shared = observe::CORES.read().await;

    let repo = TempRepo::new("grpc-deadline", &[("mlp", &slow_mlp(), "")]);
    let mut config = keel_server::ServeConfig::local(&repo.root);
    config.limits.request_timeout = 0.0;
    let s = TestServer::start_with(config).await;
    // Large enough that the MLP computes for tens of milliseconds, far past the 2 ms deadline, even when
    // the connection's thread is slow to see it pass on a busy machine (64 rows, a few ms, sometimes
    // finished first in CI, and the call was answered).
    let rows = 256;
    let request = pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 512],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0u8; rows * 512 * 4]],
        ..Default::default()
    };
    let message = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend(message);

    let tcp = tokio::net::TcpStream::connect(s.server.grpc_addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let call = |timeout: &str| {
        axum::http::Request::post(format!(
            "http://{}/inference.GRPCInferenceService/ModelInfer",
            s.server.grpc_addr()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap()
    };
    let started = std::time::Instant::now();
    let (response, mut body) = client.send_request(call("2m"), false).unwrap();
    body.send_data(framed.clone().into(), true).unwrap();
    let response = response.await.unwrap();
    let took = started.elapsed();
    // A trailers-only answer: the status is in the headers.
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header("grpc-status").as_deref(), Some("4"), "{response:?}");
    let message = header("grpc-message").unwrap_or_default();
    assert!(message.contains("grpc-timeout"), "{message}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The same call with time enough is answered.
    let mut client = client.ready().await.unwrap();
    let (response, mut body) = client.send_request(call("60S"), false).unwrap();
    body.send_data(framed.into(), true).unwrap();
    let mut response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let data = response.body_mut();
    while let Some(chunk) = data.data().await {
        // The answer is larger than the stream's window: read bytes must be handed back.
        let chunk = chunk.unwrap();
        data.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let trailers = data.trailers().await.unwrap().unwrap_or_default();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    s.server.shutdown().await.unwrap();
}

/// One HTTP/1.1 response read off a keep-alive connection: its status and JSON body (by its
/// `content-length`).
async fn read_response(conn: &mut tokio::net::TcpStream) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf.len(), head_end + length, "one response at a time");
    (status, serde_json::from_slice(&buf[head_end..]).unwrap())
}
