//! `keel monitor` flags, every one also settable through a `KEEL_*` variable. The drift and
//! webhook groups are separate [`clap::Args`] so `keel serve` can flatten them into its own flags
//! when it runs the monitor in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use prometheus::Registry;

use crate::auth::ApiTokenArgs;
use crate::event::AlertSink;
use crate::outbound::{OutboundTlsArgs, redact_url};
use crate::settings::MonitorConfig;
use crate::webhook::{Secret, Webhook, WebhookConfig, WebhookError};

/// The variable holding the webhook secret when no secret file is given. Read directly, never a
/// flag, so the secret does not show in process listings.
pub const WEBHOOK_SECRET_ENV: &str = "KEEL_WEBHOOK_SECRET";

/// Rolling-window drift settings.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct MonitorArgs {
    /// Length of the rolling drift window, in seconds.
    #[arg(long, env = "KEEL_WINDOW_SECONDS", default_value_t = 600.0, value_parser = parse_seconds)]
    pub window_seconds: f64,

    /// Sub-window buckets; the window slides by window / buckets at a time.
    #[arg(long, env = "KEEL_BUCKETS", default_value_t = 10)]
    pub buckets: u32,

    /// Rows a column needs in the window before its PSI/CSI is reported (a model's
    /// `[monitor] min_samples` overrides it).
    #[arg(long, env = "KEEL_MIN_SAMPLES", default_value_t = 1000)]
    pub min_samples: u64,

    /// Seconds between evaluations of the windows and alert rules; fractions allowed.
    #[arg(long, env = "KEEL_EVALUATE_EVERY", default_value_t = 5.0, value_parser = parse_seconds)]
    pub evaluate_every: f64,

    /// Seconds a logged prediction waits for its feedback.
    #[arg(long, env = "KEEL_FEEDBACK_TTL_SECONDS", default_value_t = 3600.0, value_parser = parse_seconds)]
    pub feedback_ttl_seconds: f64,

    /// Most predictions waiting for feedback, all models together (oldest evicted first).
    #[arg(long, env = "KEEL_FEEDBACK_CAPACITY", default_value_t = 100_000)]
    pub feedback_capacity: usize,
}

impl Default for MonitorArgs {
    fn default() -> MonitorArgs {
        let d = MonitorConfig::default();
        MonitorArgs {
            window_seconds: d.window.as_secs_f64(),
            buckets: d.buckets,
            min_samples: d.min_samples,
            evaluate_every: d.evaluate_every.as_secs_f64(),
            feedback_ttl_seconds: d.feedback_ttl.as_secs_f64(),
            feedback_capacity: d.feedback_capacity,
        }
    }
}

impl MonitorArgs {
    /// The monitor's configuration; [`Monitor::new`](crate::Monitor::new) validates it.
    pub fn monitor_config(&self) -> MonitorConfig {
        MonitorConfig {
            window: seconds(self.window_seconds),
            buckets: self.buckets,
            min_samples: self.min_samples,
            feedback_ttl: seconds(self.feedback_ttl_seconds),
            feedback_capacity: self.feedback_capacity,
            evaluate_every: seconds(self.evaluate_every),
        }
    }
}

/// Where drift alerts go.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct WebhookArgs {
    /// Receiver of drift and performance alerts (CloudEvents, signed per Standard Webhooks),
    /// `https://` (system roots plus --ca-bundle) or `http://`. Unset: alerts are only visible as
    /// metrics.
    #[arg(long, env = "KEEL_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// File holding the webhook signing secret (`whsec_<base64>` or raw text). Without it the
    /// secret is read from KEEL_WEBHOOK_SECRET; one of the two is required with --webhook-url.
    #[arg(long, env = "KEEL_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// CloudEvents `source` of the alerts.
    #[arg(long, env = "KEEL_WEBHOOK_SOURCE", default_value = "keel")]
    pub webhook_source: String,

    /// Folder of alerts not yet delivered, kept across restarts. Created 0700; refused when another
    /// user owns it.
    #[arg(long, env = "KEEL_STATE_DIR", default_value_os_t = default_state_dir())]
    pub state_dir: PathBuf,
}

impl Default for WebhookArgs {
    fn default() -> WebhookArgs {
        WebhookArgs {
            webhook_url: None,
            webhook_secret_file: None,
            webhook_source: "keel".into(),
            state_dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    std::env::temp_dir().join("keel-webhook")
}

impl WebhookArgs {
    /// The sender's configuration, or `None` without a URL. `log_dir` is the prediction log whose
    /// files alerts list. Reads the secret.
    pub fn webhook_config(
        &self,
        log_dir: Option<&Path>,
    ) -> Result<Option<WebhookConfig>, WebhookError> {
        self.webhook_config_with(log_dir, WEBHOOK_SECRET_ENV)
    }

    fn webhook_config_with(
        &self,
        log_dir: Option<&Path>,
        secret_env: &str,
    ) -> Result<Option<WebhookConfig>, WebhookError> {
        let Some(url) = &self.webhook_url else {
            if self.webhook_secret_file.is_some() {
                tracing::warn!(
                    "--webhook-secret-file is set but --webhook-url is not; no alerts are sent"
                );
            }
            return Ok(None);
        };
        let secret = match &self.webhook_secret_file {
            Some(path) => Secret::from_file(path)?,
            None => match std::env::var(secret_env) {
                Ok(text) => Secret::new(&text)?,
                Err(_) => {
                    return Err(WebhookError::Secret(format!(
                        "--webhook-url needs --webhook-secret-file or {secret_env}"
                    )));
                }
            },
        };
        let mut config = WebhookConfig::new(url.clone(), secret, self.state_dir.clone());
        config.source = self.webhook_source.clone();
        config.log_dir = log_dir.map(Path::to_path_buf);
        Ok(Some(config))
    }
}

/// Starts the webhook sender when a URL is configured; the sink goes to
/// [`Monitor::new`](crate::Monitor::new). `tls` is `--ca-bundle`. Shared by `keel monitor` and
/// `keel serve`'s in-process monitor. Must run inside a tokio runtime.
pub fn start_alerts(
    webhook: &WebhookArgs,
    tls: &OutboundTlsArgs,
    log_dir: Option<&Path>,
    registry: &Registry,
) -> Result<Option<(Webhook, AlertSink)>, WebhookError> {
    let Some(mut config) = webhook.webhook_config(log_dir)? else {
        return Ok(None);
    };
    config.tls = tls.clone();
    let url = redact_url(&config.url);
    let started = Webhook::start(config, registry)?;
    tracing::info!(%url, "alerts are sent to the webhook");
    Ok(Some(started))
}

/// `keel monitor`: the drift monitor as a sidecar fed by `keel serve` over gRPC.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct SidecarConfig {
    /// Address of the gRPC endpoint servers stream to (keel.monitor.v1.MonitorService). Loopback
    /// by default; to take streams from other hosts listen on 0.0.0.0 and set --api-token(-file).
    #[arg(long, env = "KEEL_MONITOR_LISTEN", default_value = "127.0.0.1:8011")]
    pub listen: SocketAddr,

    /// Address of GET /metrics (Prometheus), GET /healthz and GET /v1/drift/{model}/{version}.
    /// Loopback by default; metrics and health stay open when a token is set, drift reports do not.
    #[arg(
        long,
        env = "KEEL_MONITOR_METRICS_ADDR",
        default_value = "127.0.0.1:8012"
    )]
    pub metrics_addr: SocketAddr,

    // Servers streaming to the sidecar and readers of drift reports present this token (`keel serve
    // --monitor-token(-file)`); /metrics and /healthz stay open for scrapes and probes.
    #[command(flatten)]
    pub api_token: ApiTokenArgs,

    #[command(flatten)]
    pub outbound_tls: OutboundTlsArgs,

    #[command(flatten)]
    pub monitor: MonitorArgs,

    #[command(flatten)]
    pub webhook: WebhookArgs,

    /// The prediction log written by `keel serve`, if shared with this sidecar (writable): alerts
    /// then list its Parquet files holding the window's rows, after asking `keel serve` to finish
    /// the open ones.
    #[arg(long, env = "KEEL_PREDICTION_LOG_DIR")]
    pub prediction_log_dir: Option<PathBuf>,
}

impl SidecarConfig {
    /// Defaults, listening on ephemeral 127.0.0.1 ports: for tests and embedding. Ignores `KEEL_*`
    /// variables.
    pub fn local() -> SidecarConfig {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        SidecarConfig {
            listen: local,
            metrics_addr: local,
            api_token: ApiTokenArgs::default(),
            outbound_tls: OutboundTlsArgs::default(),
            monitor: MonitorArgs::default(),
            webhook: WebhookArgs::default(),
            prediction_log_dir: None,
        }
    }

    pub fn monitor_config(&self) -> MonitorConfig {
        self.monitor.monitor_config()
    }
}

/// Seconds as flags give them: finite, from 0 to a year (windows may be long). Zero passes here;
/// [`MonitorConfig::validate`] refuses it where it matters.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=MAX_SECONDS).contains(&s) => Ok(s),
        _ => Err(format!(
            "'{text}' is not a number of seconds between 0 and {MAX_SECONDS}"
        )),
    }
}

const MAX_SECONDS: f64 = 366.0 * 86_400.0;

/// Out-of-range values (possible only when code sets the fields) become zero, which
/// [`MonitorConfig::validate`] refuses, rather than panicking.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: SidecarConfig,
    }

    fn parse(args: &[&str]) -> Result<SidecarConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("keel-monitor").chain(args.iter().copied()))
            .map(|c| c.config)
    }

    #[test]
    fn defaults_match_the_monitor() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8011".parse().unwrap());
        assert_eq!(c.metrics_addr, "127.0.0.1:8012".parse().unwrap());
        assert_eq!(c.api_token, ApiTokenArgs::default());
        assert_eq!(c.outbound_tls, OutboundTlsArgs::default());
        assert_eq!(c.monitor_config(), MonitorConfig::default());
        assert_eq!(c.monitor, MonitorArgs::default());
        assert_eq!(c.webhook, WebhookArgs::default());
        assert_eq!(c.webhook.webhook_config(None).unwrap().map(|w| w.url), None);
    }

    #[test]
    fn token_bundle_and_addresses() {
        let c = parse(&[
            "--api-token-file",
            "/run/secrets/monitor-token",
            "--ca-bundle",
            "/etc/keel/ca.pem",
            "--listen",
            "0.0.0.0:8011",
        ])
        .unwrap();
        assert_eq!(
            c.api_token.api_token_file.as_deref(),
            Some(Path::new("/run/secrets/monitor-token"))
        );
        assert_eq!(
            c.outbound_tls.ca_bundle.as_deref(),
            Some(Path::new("/etc/keel/ca.pem"))
        );
        assert_eq!(c.listen, "0.0.0.0:8011".parse().unwrap());
        assert_eq!(c.metrics_addr, "127.0.0.1:8012".parse().unwrap());
    }

    #[test]
    fn fractions_and_limits() {
        let c = parse(&["--evaluate-every", "0.25", "--window-seconds", "60"]).unwrap();
        let m = c.monitor_config();
        assert_eq!(m.evaluate_every, Duration::from_millis(250));
        assert_eq!(m.window, Duration::from_secs(60));
        assert!(parse(&["--evaluate-every", "-1"]).is_err());
        assert!(parse(&["--evaluate-every", "NaN"]).is_err());
        assert!(parse(&["--window-seconds", "1e300"]).is_err());
        // Zero parses and is refused by the monitor's own validation.
        let zero = parse(&["--evaluate-every", "0"]).unwrap();
        assert!(zero.monitor_config().validate().is_err());
    }

    #[test]
    fn webhook_needs_a_secret() {
        let args = WebhookArgs {
            webhook_url: Some("http://127.0.0.1:9/hook".into()),
            ..WebhookArgs::default()
        };
        let err = args
            .webhook_config_with(None, "KEEL_TEST_SECRET_THAT_IS_NEVER_SET")
            .unwrap_err();
        assert!(err.to_string().contains("--webhook-secret-file"), "{err}");
    }

    #[test]
    fn webhook_from_secret_file() {
        let dir = std::env::temp_dir().join(format!("keel-sidecar-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "whsec_c2VjcmV0\n").unwrap();
        let c = parse(&[
            "--webhook-url",
            "http://127.0.0.1:9/hook",
            "--webhook-secret-file",
            secret.to_str().unwrap(),
            "--webhook-source",
            "keel-test",
            "--state-dir",
            dir.join("state").to_str().unwrap(),
        ])
        .unwrap();
        let log = dir.join("log");
        let w = c.webhook.webhook_config(Some(&log)).unwrap().unwrap();
        assert_eq!(w.url, "http://127.0.0.1:9/hook");
        assert_eq!(w.source, "keel-test");
        assert_eq!(w.state_dir, dir.join("state"));
        assert_eq!(w.log_dir, Some(log));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
