use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{Metrics, Outcome, Protocol};

/// The exposition's value of the series `name{labels}` (labels as the text shows them), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn text(metrics: &Metrics) -> String {
    String::from_utf8(metrics.encode()).unwrap()
}

/// Every thread's updates are in the scrape, the last shard's writers (threads beyond the owners) as
/// well as the owners', and each family shows what it showed as a `prometheus` vector.
#[test]
fn a_scrape_adds_up_every_threads_shard() {
    let metrics = Metrics::new();
    let version = Arc::new(metrics.version("m", 3, "tract"));
    // More threads than shards: some share the last one.
    let threads: Vec<_> = (0..super::SHARDS + 4)
        .map(|_| {
            let version = version.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    version.record_request(
                        Protocol::Http,
                        Outcome::Success,
                        Duration::from_micros(200),
                    );
                    version.record_answer(2, Duration::from_micros(30));
                    version.queue_depth.inc();
                }
                version.record_request(Protocol::Grpc, Outcome::Invalid, Duration::ZERO);
                version.record_execution(Duration::from_micros(80), 5);
                for _ in 0..99 {
                    version.queue_depth.dec();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = (super::SHARDS + 4) as f64;
    let text = text(&metrics);
    let requests = |protocol: &str, outcome: &str| {
        value(
            &text,
            &format!(
                "keel_inference_requests_total{{model=\"m\",outcome=\"{outcome}\",protocol=\"{protocol}\",version=\"3\"}}"
            ),
        )
    };
    assert_eq!(requests("http", "success"), Some(100.0 * n));
    assert_eq!(requests("grpc", "invalid"), Some(n));
    assert_eq!(
        requests("grpc", "timeout"),
        Some(0.0),
        "zeros are shown too"
    );
    let mv = "{model=\"m\",version=\"3\"}";
    assert_eq!(
        value(&text, &format!("keel_inference_rows_total{mv}")),
        Some(200.0 * n)
    );
    assert_eq!(
        value(&text, "keel_model_rows_total{model=\"m\"}"),
        Some(200.0 * n)
    );
    assert_eq!(value(&text, &format!("keel_queue_depth{mv}")), Some(n));
    // Only successes are timed; 200 µs falls in the 250 µs bucket, not the 100 µs one.
    let http = "model=\"m\",protocol=\"http\",version=\"3\"";
    assert_eq!(
        value(
            &text,
            &format!("keel_request_duration_seconds_count{{{http}}}")
        ),
        Some(100.0 * n)
    );
    assert_eq!(
        value(
            &text,
            &format!("keel_request_duration_seconds_bucket{{{http},le=\"0.0001\"}}")
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            &format!("keel_request_duration_seconds_bucket{{{http},le=\"0.00025\"}}")
        ),
        Some(100.0 * n)
    );
    assert_eq!(
        value(
            &text,
            &format!("keel_request_duration_seconds_bucket{{{http},le=\"+Inf\"}}")
        ),
        Some(100.0 * n)
    );
    let sum = value(
        &text,
        &format!("keel_request_duration_seconds_sum{{{http}}}"),
    )
    .unwrap();
    assert!((sum - 0.0002 * 100.0 * n).abs() < 1e-9, "{sum}");
    assert_eq!(
        value(&text, &format!("keel_queue_duration_seconds_count{mv}")),
        Some(100.0 * n)
    );
    assert_eq!(
        value(
            &text,
            "keel_batch_rows_bucket{model=\"m\",version=\"3\",le=\"4\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "keel_batch_rows_bucket{model=\"m\",version=\"3\",le=\"8\"}"
        ),
        Some(n)
    );
    assert_eq!(
        value(&text, &format!("keel_batch_rows_sum{mv}")),
        Some(5.0 * n)
    );
    assert_eq!(
        value(&text, &format!("keel_compute_duration_seconds_count{mv}")),
        Some(n)
    );
    assert!(text.contains("# TYPE keel_inference_requests_total counter"));
    assert!(text.contains("# TYPE keel_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE keel_queue_depth gauge"));
}

/// A reload's new instance counts on in the same series; when the last instance of a version goes its
/// series go, and the model's rows keep what it served.
#[test]
fn versions_share_their_series_until_the_last_goes() {
    let metrics = Metrics::new();
    let old = metrics.version("m", 1, "onnxruntime");
    old.record_answer(3, Duration::ZERO);
    let new = metrics.version("m", 1, "onnxruntime");
    new.record_answer(4, Duration::ZERO);
    drop(old);
    let mv = "{model=\"m\",version=\"1\"}";
    assert_eq!(
        value(&text(&metrics), &format!("keel_inference_rows_total{mv}")),
        Some(7.0)
    );
    let next = metrics.version("m", 2, "onnxruntime");
    next.record_answer(5, Duration::ZERO);
    drop(new);
    let text = text(&metrics);
    assert_eq!(
        value(&text, &format!("keel_inference_rows_total{mv}")),
        None
    );
    assert!(!text.contains("version=\"1\""), "{text}");
    assert_eq!(
        value(&text, "keel_model_rows_total{model=\"m\"}"),
        Some(12.0)
    );
    drop(next);
    let text = self::text(&metrics);
    assert_eq!(
        value(&text, "keel_model_rows_total{model=\"m\"}"),
        Some(12.0)
    );
    assert!(!text.contains("keel_inference_rows_total{"), "{text}");
}

/// `keel_inflight_request_bytes` is read from the budgets' own counters.
#[test]
fn the_inflight_bytes_gauge_reads_the_budgets() {
    let metrics = Metrics::new();
    assert_eq!(
        value(&text(&metrics), "keel_inflight_request_bytes"),
        Some(0.0)
    );
    let budget = crate::budget::Budget::new(100, &metrics);
    let held = budget.acquire(40).unwrap();
    assert_eq!(
        value(&text(&metrics), "keel_inflight_request_bytes"),
        Some(40.0)
    );
    drop(held);
    assert_eq!(metrics.inflight_request_bytes.get(), 0);
    let _held = budget.acquire(9).unwrap();
    drop(budget);
    // A budget lives as long as its permits.
    assert_eq!(metrics.inflight_request_bytes.get(), 9);
}
