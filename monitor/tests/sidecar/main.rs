//! The `keel monitor` sidecar end to end, in-process: a generated client streams versions, rows and
//! feedback; metrics, drift reports and alerts come out.
//!
//! The tests are here, at the crate root (their names are what `cargo test` prints); the sidecar's
//! configuration in setup.rs, its gRPC clients in grpc.rs, what the tests read over HTTP in observe.rs.

#[path = "../common/mod.rs"]
mod common;
mod grpc;
mod observe;
mod setup;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_monitor::sidecar::pb::{self, MonitorMessage};
use keel_monitor::sidecar::{
    CHUNK_BYTES, MAX_MESSAGE_BYTES, MAX_SENT_MESSAGE_BYTES, Sidecar, feedback_message,
    feedback_messages, records_message, records_messages, retire_message, spec_message,
};
use keel_monitor::{
    DriftReport, FeatureValue, FeedbackRecord, Metric, MonitorSettings, RuleSettings, Task,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use grpc::{client, client_with, send_all};
use observe::{get, get_with, metric_lines, wait_for_metrics, wait_for_report};
use setup::{config, now_ms, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_records_show_up_as_drift_metrics_and_reports() {
    let sidecar = Sidecar::start(config()).await.unwrap();
    let mut client = client(&sidecar).await;
    let now = now_ms();
    let records = common::in_distribution("m", 1, now, 0, 2000);
    let summary = send_all(
        &mut client,
        vec![
            spec_message(&spec("m", 1, MonitorSettings::default())).unwrap(),
            records_message(&records[..1000]),
            records_message(&records[1000..]),
        ],
    )
    .await
    .unwrap();
    assert_eq!((summary.records, summary.feedback), (2000, 0));

    let report = wait_for_report(&sidecar, "/v1/drift/m/1", |r| r.psi.is_some()).await;
    assert_eq!(report.rows, 2000);
    // Records distributed exactly like the baseline: no drift.
    assert!(report.psi.unwrap() < 0.01, "{report:?}");
    assert!(report.features[0].value.unwrap() < 0.01, "{report:?}");

    // The gauges follow at the next evaluation.
    let metrics = wait_for_metrics(&sidecar, "keel_drift_psi").await;
    let psi = metric_lines(&metrics, "keel_drift_psi");
    assert!(
        psi.iter()
            .any(|l| l.contains("model=\"m\"") && l.contains("output=\"score\"")),
        "{metrics}"
    );
    let csi = metric_lines(&metrics, "keel_drift_csi");
    assert!(csi.iter().any(|l| l.contains("feature=\"x\"")), "{metrics}");
    assert!(
        metric_lines(&metrics, "keel_sidecar_messages_total")
            .iter()
            .any(|l| l.contains("kind=\"records\"") && l.ends_with(" 2")),
        "{metrics}"
    );

    assert_eq!(get(&sidecar, "/healthz").await, (200, "ok".to_string()));
    assert_eq!(get(&sidecar, "/v1/drift/m/2").await.0, 404);
    assert_eq!(get(&sidecar, "/v1/drift/m/one").await.0, 404);
    assert_eq!(get(&sidecar, "/v1/drift/other/1").await.0, 404);
    assert_eq!(get(&sidecar, "/nowhere").await.0, 404);
    sidecar.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_counted_and_the_stream_goes_on() {
    let sidecar = Sidecar::start(config()).await.unwrap();
    let mut client = client(&sidecar).await;
    let now = now_ms();
    let bad_settings = MonitorSettings {
        sample_rate: 2.0,
        ..MonitorSettings::default()
    };
    let mut mixed = pb::Record::from(&common::in_distribution("m", 1, now, 0, 1)[0]);
    mixed.inputs[0].categories.push("oops".into());
    let no_model = pb::Record::default();
    let mut batch = records_message(&common::in_distribution("m", 1, now, 0, 10));
    if let Some(pb::monitor_message::Kind::Records(b)) = &mut batch.kind {
        b.records.push(mixed);
        b.records.push(no_model);
    }
    let no_truth = MonitorMessage {
        kind: Some(pb::monitor_message::Kind::Feedback(pb::FeedbackBatch {
            items: vec![pb::Feedback {
                model: "m".into(),
                ..pb::Feedback::default()
            }],
        })),
    };
    let invalid_json = MonitorMessage {
        kind: Some(pb::monitor_message::Kind::Version(pb::VersionSpec {
            spec_json: "{not json".into(),
        })),
    };
    let feedback = FeedbackRecord {
        model: "m".into(),
        request_id: "req-0".into(),
        row: 0,
        truth: FeatureValue::Number(0.0),
        timestamp_ms: now,
    };
    let summary = send_all(
        &mut client,
        vec![
            invalid_json,
            spec_message(&spec("m", 1, bad_settings)).unwrap(),
            MonitorMessage { kind: None },
            spec_message(&spec(
                "m",
                1,
                MonitorSettings {
                    task: Some(Task::Classifier),
                    ..MonitorSettings::default()
                },
            ))
            .unwrap(),
            batch,
            no_truth,
            feedback_message(&[feedback]),
        ],
    )
    .await
    .unwrap();
    assert_eq!((summary.records, summary.feedback), (10, 1));
    assert_eq!(
        sidecar.monitor().versions(),
        vec![("m".to_string(), 1)],
        "the valid spec after the bad ones was applied"
    );
    let report = sidecar.monitor().report("m", 1).unwrap();
    assert_eq!(report.rows, 10);
    assert_eq!(report.feedback.rows, 1);

    let (_, metrics) = get(&sidecar, "/metrics").await;
    let rejected = metric_lines(&metrics, "keel_sidecar_rejected_total");
    for expected in [
        "reason=\"invalid_spec\"} 2",
        "reason=\"empty_message\"} 1",
        "reason=\"invalid_record\"} 2",
        "reason=\"invalid_feedback\"} 1",
    ] {
        assert!(
            rejected.iter().any(|l| l.ends_with(expected)),
            "{expected}: {rejected:?}"
        );
    }
    sidecar.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_after_the_first_ends_picks_up_the_same_state() {
    let sidecar = Sidecar::start(config()).await.unwrap();
    let now = now_ms();
    let mut first = client(&sidecar).await;
    send_all(
        &mut first,
        vec![
            spec_message(&spec("m", 1, MonitorSettings::default())).unwrap(),
            spec_message(&spec("m", 2, MonitorSettings::default())).unwrap(),
            records_message(&common::in_distribution("m", 1, now, 0, 300)),
        ],
    )
    .await
    .unwrap();
    drop(first);

    // The monitor's state outlives the stream that built it.
    let mut second = client(&sidecar).await;
    let summary = send_all(
        &mut second,
        vec![
            records_message(&common::in_distribution("m", 1, now, 300, 200)),
            retire_message("m", 2),
        ],
    )
    .await
    .unwrap();
    assert_eq!(summary.records, 200);
    assert_eq!(sidecar.monitor().report("m", 1).unwrap().rows, 500);
    assert_eq!(sidecar.monitor().versions(), vec![("m".to_string(), 1)]);

    // A third stream on the same connection works too.
    let summary = send_all(
        &mut second,
        vec![records_message(&common::in_distribution(
            "m", 1, now, 500, 1,
        ))],
    )
    .await
    .unwrap();
    assert_eq!(summary.records, 1);
    sidecar.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_only_its_stream() {
    let sidecar = Sidecar::start(config()).await.unwrap();
    let mut client = client(&sidecar).await;
    let mut huge = common::in_distribution("m", 1, now_ms(), 0, 1).remove(0);
    huge.inputs = vec![(
        "wide".into(),
        vec![FeatureValue::Number(1.0); MAX_MESSAGE_BYTES / 8 + 1],
    )];
    let error = send_all(&mut client, vec![records_message(&[huge])])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{error:?}"
    );
    let summary = send_all(
        &mut client,
        vec![spec_message(&spec("m", 1, MonitorSettings::default())).unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(summary.records, 0);
    assert_eq!(sidecar.monitor().versions().len(), 1);
    sidecar.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_limit_goes_in_chunks_and_a_row_too_large_alone_is_left_out() {
    use prost::Message;
    let sidecar = Sidecar::start(config()).await.unwrap();
    let mut client = client(&sidecar).await;
    // 1,200 rows of 2,000 numbers: about 19 MiB on the wire, over the 16 MiB limit as one message.
    let mut records = common::in_distribution("m", 1, now_ms(), 0, 1200);
    for r in &mut records {
        r.inputs
            .push(("wide".into(), vec![FeatureValue::Number(0.5); 2000]));
    }
    assert!(records_message(&records).encoded_len() > MAX_MESSAGE_BYTES);
    // And one row that does not fit in any message.
    let mut huge = records[0].clone();
    huge.inputs = vec![(
        "wide".into(),
        vec![FeatureValue::Number(1.0); MAX_MESSAGE_BYTES / 8 + 1],
    )];
    records.insert(600, huge);
    let chunked = records_messages(&records, CHUNK_BYTES, MAX_SENT_MESSAGE_BYTES);
    assert_eq!(chunked.too_large.len(), 1);
    assert!(chunked.chunks.len() >= 19, "{}", chunked.chunks.len());
    assert!(chunked.chunks.iter().all(|c| c.bytes <= CHUNK_BYTES));
    let messages: Vec<MonitorMessage> = chunked.chunks.into_iter().map(|c| c.message).collect();
    let summary = send_all(&mut client, messages).await.unwrap();
    assert_eq!(
        summary.records, 1200,
        "every row but the one too large arrived"
    );

    // Feedback is chunked the same way.
    let feedback: Vec<FeedbackRecord> = (0..50_000)
        .map(|i| FeedbackRecord {
            model: "m".into(),
            request_id: format!("request-{i}"),
            row: 0,
            truth: FeatureValue::Category("x".repeat(100)),
            timestamp_ms: now_ms(),
        })
        .collect();
    let chunked = feedback_messages(&feedback, CHUNK_BYTES, MAX_SENT_MESSAGE_BYTES);
    assert!(chunked.too_large.is_empty() && chunked.chunks.len() > 4);
    let summary = send_all(
        &mut client,
        chunked.chunks.into_iter().map(|c| c.message).collect(),
    )
    .await
    .unwrap();
    assert_eq!(summary.feedback, 50_000);
    sidecar.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_their_summary() {
    let sidecar = Sidecar::start(config()).await.unwrap();
    let mut client = client(&sidecar).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(spec_message(&spec("m", 1, MonitorSettings::default())).unwrap())
        .await
        .unwrap();
    tx.send(records_message(&common::in_distribution(
        "m",
        1,
        now_ms(),
        0,
        5,
    )))
    .await
    .unwrap();
    let call = tokio::spawn(async move { client.stream(ReceiverStream::new(rx)).await });
    // The stream stays open (tx is alive); wait until the sidecar has applied what was sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sidecar.monitor().report("m", 1).is_none_or(|r| r.rows < 5) {
        assert!(Instant::now() < deadline, "records never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), sidecar.shutdown())
        .await
        .expect("shutdown waits for no client")
        .unwrap();
    let summary = call.await.unwrap().unwrap().into_inner();
    assert_eq!(summary.records, 5);
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_alerts_reach_the_webhook() {
    use axum::routing::post;

    let received = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let receiver_task = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let dir = std::env::temp_dir().join(format!("keel-sidecar-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "whsec_dGVzdC1zZWNyZXQ=\n").unwrap();
    let mut config = config();
    config.webhook.webhook_url = Some(format!("http://{hook_addr}/hook"));
    config.webhook.webhook_secret_file = Some(secret);
    config.webhook.webhook_source = "keel-test".into();
    config.webhook.state_dir = dir.join("state");
    let sidecar = Sidecar::start(config).await.unwrap();

    let settings = MonitorSettings {
        rules: Some(vec![RuleSettings {
            consecutive: 1,
            ..RuleSettings::new(Metric::Psi)
        }]),
        ..MonitorSettings::default()
    };
    let mut client = client(&sidecar).await;
    send_all(
        &mut client,
        vec![
            spec_message(&spec("m", 1, settings)).unwrap(),
            records_message(&common::drifted("m", 1, now_ms(), 0, 500)),
        ],
    )
    .await
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        if let Some(event) = received.lock().unwrap().first().cloned() {
            break event;
        }
        assert!(Instant::now() < deadline, "no alert delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["type"], "dev.keel.drift.detected", "{event}");
    assert_eq!(event["source"], "keel-test", "{event}");
    let (_, metrics) = get(&sidecar, "/metrics").await;
    assert!(
        metrics.contains("keel_webhook_deliveries_total"),
        "{metrics}"
    );
    sidecar.shutdown().await.unwrap();
    receiver_task.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_on_shutdown_and_refuses_bad_config() {
    keel_monitor::sidecar::run(config(), async {})
        .await
        .unwrap();

    let mut bad = config();
    bad.monitor.evaluate_every = 0.0;
    let error = keel_monitor::sidecar::run(bad, std::future::pending())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("evaluate_every"), "{error}");

    let mut no_secret = config();
    no_secret.webhook.webhook_url = Some("http://127.0.0.1:9/hook".into());
    no_secret.webhook.webhook_secret_file = Some(std::env::temp_dir().join("keel-no-such-secret"));
    assert!(
        keel_monitor::sidecar::run(no_secret, std::future::pending())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_stream_and_drift_reports_but_not_metrics_or_health() {
    const TOKEN: &str = "sidecar-s3cret";
    let dir = std::env::temp_dir().join(format!("keel-sidecar-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    // Two accepted tokens (a rotation in progress), trimmed like the client's.
    std::fs::write(&file, format!("old-token\n {TOKEN} \n")).unwrap();
    let mut config = config();
    config.api_token.api_token_file = Some(file);
    let sidecar = Sidecar::start(config).await.unwrap();
    let messages = || {
        vec![
            spec_message(&spec("m", 1, MonitorSettings::default())).unwrap(),
            records_message(&common::in_distribution("m", 1, now_ms(), 0, 10)),
        ]
    };

    // No token, a wrong one, another scheme: UNAUTHENTICATED, nothing applied.
    for presented in [
        None,
        Some("Bearer wrong"),
        Some("Basic c2lkZWNhcg=="),
        Some(TOKEN),
    ] {
        let mut client = client_with(&sidecar, presented).await;
        let status = client
            .stream(tokio_stream::iter(messages()))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{presented:?}: {status:?}"
        );
        assert!(!status.message().contains(TOKEN), "{status:?}");
        assert!(!status.message().contains('/'), "no path in {status:?}");
    }
    assert!(sidecar.monitor().versions().is_empty());
    // The plain client of the other tests has no token either.
    let mut plain = client(&sidecar).await;
    assert_eq!(
        send_all(&mut plain, messages()).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // The right token, any case of the scheme: applied.
    for presented in [format!("Bearer {TOKEN}"), "bearer old-token".to_string()] {
        let mut client = client_with(&sidecar, Some(&presented)).await;
        let summary = client
            .stream(tokio_stream::iter(messages()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.records, 10);
    }
    assert_eq!(sidecar.monitor().versions(), vec![("m".to_string(), 1)]);

    // HTTP: drift reports need the token; 401 with a JSON error that says what to send.
    for presented in [None, Some("Bearer wrong")] {
        let (status, challenge, body) = get_with(&sidecar, "/v1/drift/m/1", presented).await;
        assert_eq!((status, challenge.as_str()), (401, "Bearer"), "{body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().unwrap().contains("token"), "{body}");
        assert!(!body.contains(TOKEN), "{body}");
    }
    // Even for a model that does not exist: unauthenticated clients learn nothing about models.
    assert_eq!(get_with(&sidecar, "/v1/drift/nope/1", None).await.0, 401);
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, body) = get_with(&sidecar, "/v1/drift/m/1", Some(&bearer)).await;
    assert_eq!(status, 200, "{body}");
    // The second stream sent the spec again: a fresh window with its 10 rows.
    assert_eq!(serde_json::from_str::<DriftReport>(&body).unwrap().rows, 10);
    assert_eq!(
        get_with(&sidecar, "/v1/drift/nope/1", Some(&bearer))
            .await
            .0,
        404
    );

    // Probes and scrapes stay open.
    assert_eq!(get(&sidecar, "/healthz").await, (200, "ok".to_string()));
    let (status, metrics) = get(&sidecar, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metric_lines(&metrics, "keel_sidecar_rejected_total")
            .iter()
            .any(|l| l.contains("reason=\"unauthenticated\"") && l.ends_with(" 5")),
        "{metrics}"
    );
    sidecar.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_token_file_is_a_start_error() {
    let dir = std::env::temp_dir().join(format!("keel-sidecar-empty-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(&file, "\n  \n").unwrap();
    let mut config = config();
    config.api_token.api_token_file = Some(file);
    let error = match Sidecar::start(config).await {
        Ok(_) => panic!("started with an empty token file"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("holds no token"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_unknown_models_share_one_series() {
    let sidecar = Sidecar::start(config()).await.unwrap();
    let mut client = client(&sidecar).await;
    let mut messages = vec![spec_message(&spec("m", 1, MonitorSettings::default())).unwrap()];
    for i in 0..50 {
        let name = format!("client-chosen-{i}");
        messages.push(records_message(&common::in_distribution(
            &name,
            1,
            now_ms(),
            0,
            2,
        )));
    }
    messages.push(records_message(&common::in_distribution(
        "m",
        7,
        now_ms(),
        0,
        3,
    )));
    send_all(&mut client, messages).await.unwrap();
    let (_, metrics) = get(&sidecar, "/metrics").await;
    let ignored = metric_lines(&metrics, "keel_monitor_records_ignored_total");
    assert_eq!(ignored.len(), 2, "{ignored:?}");
    assert!(
        ignored.iter().any(|l| l.contains("model=\"_unknown\"")
            && l.contains("reason=\"unknown_model\"")
            && l.ends_with(" 100")),
        "{ignored:?}"
    );
    assert!(
        ignored.iter().any(|l| l.contains("model=\"m\"")
            && l.contains("reason=\"unknown_version\"")
            && l.ends_with(" 3")),
        "{ignored:?}"
    );
    assert!(!metrics.contains("client-chosen"), "{metrics}");
    sidecar.shutdown().await.unwrap();
}
