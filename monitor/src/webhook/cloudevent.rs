//! An [`AlertEvent`] as a CloudEvents 1.0 structured-mode JSON body.
//!
//! `data` holds `model`, `version`, `rule`, `metric`, `value`, `threshold`, `window_start` and
//! `window_end` (RFC 3339, UTC, milliseconds) and the same as unix milliseconds in
//! `window_start_ms`/`window_end_ms`, `rows`, `top_features` as `[{"feature", "csi"}]`, and
//! `files` (prediction-log files covering the window). Non-finite numbers become `null`.
//!
//! Why the rule changed state, from [`Evidence`]: `drift.features` (the most drifted input
//! features, highest CSI first: `feature`, `rows`, `csi` and every other statistic the drift
//! report holds for a column), `drift.outputs` (`output`, `rows`, `psi`, ...), and `performance`:
//! `estimated` (`rows`, `accuracy`: accuracy estimated without labels) and `measured` (the feedback
//! metrics: `rows`, `accuracy`, `precision`, `recall`, `false_positive_rate`, `mae`, `rmse`), each
//! `null` when the version does not track it. `firing`: every rule of the version firing after the
//! evaluation (`rule`, `metric`, `value`, `fire`, `clear`); `data_quality`: those of them on a
//! data-quality metric (`missing_ratio`, `out_of_range_ratio`, `unseen_category_ratio`).

use serde::Serialize;

use crate::calibration::EstimatedPerformance;
use crate::event::{AlertEvent, Evidence};
use crate::report::{ColumnDrift, FeedbackMetrics};

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    time: String,
    subject: String,
    datacontenttype: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    model: &'a str,
    version: u64,
    rule: &'a str,
    metric: &'a str,
    value: f64,
    threshold: f64,
    window_start: String,
    window_end: String,
    window_start_ms: u64,
    window_end_ms: u64,
    rows: u64,
    top_features: Vec<TopFeature<'a>>,
    files: &'a [String],
    drift: DriftEvidence,
    performance: PerformanceEvidence<'a>,
    firing: Vec<Firing<'a>>,
    data_quality: Vec<Firing<'a>>,
}

#[derive(Serialize)]
struct Firing<'a> {
    rule: &'a str,
    metric: &'a str,
    value: Option<f64>,
    fire: f64,
    clear: f64,
}

/// Metrics of data-quality rules (`<stat>` or `<stat>:<column>`).
const DATA_QUALITY: [&str; 3] = [
    "missing_ratio",
    "out_of_range_ratio",
    "unseen_category_ratio",
];

#[derive(Serialize)]
struct DriftEvidence {
    features: Vec<serde_json::Value>,
    outputs: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct PerformanceEvidence<'a> {
    estimated: Option<&'a EstimatedPerformance>,
    measured: Option<&'a FeedbackMetrics>,
}

#[derive(Serialize)]
struct TopFeature<'a> {
    feature: &'a str,
    csi: f64,
}

/// A new event id: the time in hex (so ids sort roughly by creation) and 64 random bits.
pub fn new_event_id(now_ms: u64) -> String {
    format!("evt_{now_ms:012x}{:016x}", fastrand::u64(..))
}

/// The JSON body delivered for `event` under `id`.
pub fn body(event: &AlertEvent, id: &str, source: &str) -> Result<String, serde_json::Error> {
    let data = Data {
        model: &event.model,
        version: event.version,
        rule: &event.rule,
        metric: &event.metric,
        value: event.value,
        threshold: event.threshold,
        window_start: rfc3339(event.window_start_ms),
        window_end: rfc3339(event.window_end_ms),
        window_start_ms: event.window_start_ms,
        window_end_ms: event.window_end_ms,
        rows: event.rows,
        top_features: event
            .top_features
            .iter()
            .map(|(feature, csi)| TopFeature { feature, csi: *csi })
            .collect(),
        files: &event.files,
        drift: DriftEvidence {
            features: columns(&event.evidence.features, "feature", "csi")?,
            outputs: columns(&event.evidence.outputs, "output", "psi")?,
        },
        performance: performance(&event.evidence),
        firing: firing(&event.evidence, |_| true),
        data_quality: firing(&event.evidence, |metric| {
            let stat = metric.split_once(':').map_or(metric, |(stat, _)| stat);
            DATA_QUALITY.contains(&stat)
        }),
    };
    serde_json::to_string(&CloudEvent {
        specversion: "1.0",
        id,
        source,
        kind: &event.kind,
        time: rfc3339(event.time_ms),
        subject: format!("{}/{}", event.model, event.version),
        datacontenttype: "application/json",
        data,
    })
}

/// Drift report columns as JSON objects, with `name` and `value` renamed to say what they are;
/// whatever else the report holds for a column (other statistics) is passed through.
fn columns(
    columns: &[ColumnDrift],
    name: &str,
    value: &str,
) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    columns
        .iter()
        .map(|c| {
            let mut json = serde_json::to_value(c)?;
            if let Some(object) = json.as_object_mut() {
                for (from, to) in [("name", name), ("value", value)] {
                    if let Some(v) = object.remove(from) {
                        object.insert(to.to_owned(), v);
                    }
                }
            }
            Ok(json)
        })
        .collect()
}

fn firing(evidence: &Evidence, keep: impl Fn(&str) -> bool) -> Vec<Firing<'_>> {
    evidence
        .firing
        .iter()
        .filter(|a| keep(&a.metric))
        .map(|a| Firing {
            rule: &a.rule,
            metric: &a.metric,
            value: a.value,
            fire: a.fire,
            clear: a.clear,
        })
        .collect()
}

fn performance(evidence: &Evidence) -> PerformanceEvidence<'_> {
    PerformanceEvidence {
        estimated: evidence.estimated.as_ref(),
        measured: evidence.measured.as_ref(),
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T06:40:47.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::AlertState;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        // Far-future inputs format without overflow rather than panic.
        assert!(rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn body_is_a_cloudevent() {
        let event = AlertEvent {
            kind: crate::event::DRIFT_DETECTED.into(),
            model: "fraud".into(),
            version: 3,
            rule: "psi_high".into(),
            metric: "psi".into(),
            value: 0.31,
            threshold: 0.25,
            window_start_ms: 1_000,
            window_end_ms: 61_000,
            rows: 500,
            top_features: vec![("amount".into(), 0.4), ("city".into(), f64::NAN)],
            files: vec!["/log/fraud/predictions-1-2-0.parquet".into()],
            time_ms: 61_500,
            evidence: Evidence {
                features: vec![ColumnDrift {
                    name: "amount".into(),
                    rows: 500,
                    value: Some(0.4),
                    ..ColumnDrift::default()
                }],
                outputs: vec![],
                estimated: Some(EstimatedPerformance {
                    rows: 500,
                    accuracy: Some(0.81),
                }),
                measured: None,
                firing: vec![AlertState {
                    rule: "nulls".into(),
                    metric: "missing_ratio:amount".into(),
                    firing: true,
                    fire: 0.05,
                    clear: 0.01,
                    value: Some(0.2),
                    over: 0,
                    last_fired_ms: Some(61_500),
                }],
            },
        };
        let json: serde_json::Value =
            serde_json::from_str(&body(&event, "evt_1", "keel").unwrap()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], "evt_1");
        assert_eq!(json["source"], "keel");
        assert_eq!(json["type"], "dev.keel.drift.detected");
        assert_eq!(json["time"], "1970-01-01T00:01:01.500Z");
        assert_eq!(json["subject"], "fraud/3");
        assert_eq!(json["datacontenttype"], "application/json");
        let data = &json["data"];
        assert_eq!(data["version"], 3);
        assert_eq!(data["window_start"], "1970-01-01T00:00:01.000Z");
        assert_eq!(data["window_end_ms"], 61_000);
        assert_eq!(data["top_features"][0]["feature"], "amount");
        assert_eq!(data["top_features"][0]["csi"], 0.4);
        assert!(data["top_features"][1]["csi"].is_null());
        assert_eq!(data["files"][0], "/log/fraud/predictions-1-2-0.parquet");
        let drifted = &data["drift"]["features"][0];
        assert_eq!(drifted["feature"], "amount");
        assert_eq!(drifted["csi"], 0.4);
        assert_eq!(drifted["rows"], 500);
        assert!(drifted.get("value").is_none() && drifted.get("name").is_none());
        assert_eq!(data["drift"]["outputs"], serde_json::json!([]));
        assert_eq!(data["performance"]["estimated"]["accuracy"], 0.81);
        assert!(data["performance"]["measured"].is_null());
        assert_eq!(data["firing"][0]["rule"], "nulls");
        assert_eq!(data["data_quality"][0]["metric"], "missing_ratio:amount");
        assert_eq!(data["data_quality"][0]["value"], 0.2);
    }

    #[test]
    fn ids_differ() {
        assert_ne!(new_event_id(5), new_event_id(5));
        assert!(new_event_id(5).starts_with("evt_000000000005"));
    }
}
