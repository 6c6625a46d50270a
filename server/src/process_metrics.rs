//! The standard `process_*` metrics (resident memory, CPU seconds, open fds, start time), read from
//! /proc/self on Linux. Names follow Prometheus' client conventions so stock dashboards work.

use prometheus::proto::MetricFamily;
use prometheus::{Gauge, Opts};

/// Clock ticks per second of /proc's CPU times: 100 on every mainstream Linux build.
const CLOCK_TICKS: f64 = 100.0;

pub fn gather() -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15, starttime 22.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / CLOCK_TICKS);
    push_counter(
        &mut out,
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        cpu,
    );
    push_gauge(
        &mut out,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        resident_bytes(),
    );
    push_gauge(
        &mut out,
        "process_open_fds",
        "Number of open file descriptors.",
        open_fds(),
    );
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
    });
    let start = boot
        .zip(field(22))
        .map(|(b, ticks)| b + ticks / CLOCK_TICKS);
    let help = "Start time of the process since unix epoch in seconds.";
    push_gauge(&mut out, "process_start_time_seconds", help, start);
    out
}

fn push_gauge(out: &mut Vec<MetricFamily>, name: &str, help: &str, value: Option<f64>) {
    if let Some(v) = value {
        let g = Gauge::with_opts(Opts::new(name, help)).expect("valid gauge");
        g.set(v);
        out.extend(prometheus::core::Collector::collect(&g));
    }
}

fn push_counter(out: &mut Vec<MetricFamily>, name: &str, help: &str, value: Option<f64>) {
    if let Some(v) = value {
        let c = prometheus::Counter::with_opts(Opts::new(name, help)).expect("valid counter");
        c.inc_by(v);
        out.extend(prometheus::core::Collector::collect(&c));
    }
}

fn resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim();
    kb.parse::<f64>().ok().map(|kb| kb * 1024.0)
}

fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}
