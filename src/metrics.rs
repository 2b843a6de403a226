//! `GET /metrics`: the reactor's counters, the loop's timings of itself and whatever the handler
//! adds, in the Prometheus text format (version 0.0.4) as the `prometheus-client` crate encodes
//! it. The chat's page handler (`chat/web.rs`) builds one [`Exposition`] per scrape from the
//! current values, so the loop keeps plain integers (`reactor/stats.rs`) and pays nothing extra
//! per message for being watched.

use std::fmt;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
pub use prometheus_client::registry::Unit;

use crate::http;
use crate::reactor::{Histogram, Stats, Tally};

/// Every metric's name starts with this and an underscore.
pub const PREFIX: &str = "wschat";
/// The `Content-Type` of the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One scrape's metrics: built, encoded, dropped.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// The reactor's metrics, as of `stats`.
    pub fn new(stats: &Stats) -> Self {
        let mut metrics = Exposition { registry: Registry::with_prefix(PREFIX) };
        metrics.gauge("connections_open", None, "Open WebSocket connections", stats.connections as u64);
        metrics.counter(
            "connections_accepted",
            None,
            "WebSocket handshakes completed",
            stats.connections_accepted,
        );
        metrics.registry.register(
            "connections_refused",
            "Requests refused before they became WebSockets (malformed, not a GET, an upgrade not \
             taken), by the HTTP status they were answered with",
            ByCode { label: "reason", tally: stats.refused.clone() },
        );
        metrics.counter("messages_received", None, "Text and binary messages received", stats.messages_in);
        metrics.counter(
            "messages_sent",
            None,
            "Messages queued to clients (a broadcast to 100 members counts 100)",
            stats.messages_out,
        );
        let frames = "WebSocket traffic, frame headers and the handshake included";
        metrics.counter("received", Some(Unit::Bytes), &format!("Bytes read: {frames}"), stats.bytes_in);
        metrics.counter("sent", Some(Unit::Bytes), &format!("Bytes written: {frames}"), stats.bytes_out);
        metrics.counter(
            "slow_readers_dropped",
            None,
            "Clients reset because their send buffer overflowed",
            stats.slow_consumers_dropped,
        );
        metrics.registry.register(
            "close_codes_sent",
            "Close frames queued for clients, by close code (replies to the clients' own included; \
             1005: a reply to a close frame without a code)",
            ByCode { label: "code", tally: stats.close_codes_sent.clone() },
        );
        metrics.registry.register_with_unit(
            "loop_iteration",
            "Each event loop iteration's work, from poll returning to the end of the iteration",
            Unit::Seconds,
            stats.loop_iteration.clone(),
        );
        metrics.registry.register_with_unit(
            "flush_round",
            "Each flush round: one write to every connection with output queued",
            Unit::Seconds,
            stats.flush_round.clone(),
        );
        metrics.gauge(
            "uptime",
            Some(Unit::Seconds),
            "Seconds since the server started",
            stats.uptime_seconds,
        );
        metrics.registry.register_with_unit(
            "start_time",
            "When the server started, in seconds since the Unix epoch",
            Unit::Seconds,
            ConstGauge::new(stats.start_time_unix_ms as f64 / 1000.0),
        );
        metrics
    }

    /// Adds a counter: `wschat_NAME_UNIT_total`.
    pub fn counter(&mut self, name: &str, unit: Option<Unit>, help: &str, value: u64) {
        match unit {
            Some(unit) => self.registry.register_with_unit(name, help, unit, ConstCounter::new(value)),
            None => self.registry.register(name, help, ConstCounter::new(value)),
        }
    }

    /// Adds a gauge: `wschat_NAME_UNIT`.
    pub fn gauge(&mut self, name: &str, unit: Option<Unit>, help: &str, value: u64) {
        match unit {
            Some(unit) => self.registry.register_with_unit(name, help, unit, ConstGauge::new(value)),
            None => self.registry.register(name, help, ConstGauge::new(value)),
        }
    }

    /// The metrics in the text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)
            // Invariant: writing to a `String` cannot fail, and no metric here fails to encode.
            .expect("metrics always encode");
        text
    }

    /// The whole HTTP response to `GET /metrics`.
    pub fn response(&self) -> Vec<u8> {
        let headers = [("Cache-Control", "no-cache")];
        http::response(200, "OK", CONTENT_TYPE, &headers, self.encode().as_bytes())
    }
}

/// A counter per code: `NAME_total{LABEL="CODE"}`, in ascending order of code.
#[derive(Debug)]
struct ByCode {
    label: &'static str,
    tally: Tally,
}

impl EncodeMetric for ByCode {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for (code, count) in self.tally.iter() {
            let labels = [(self.label, code.to_string())];
            encoder.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The loop's histograms, in seconds, as Prometheus wants durations.
impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let buckets: Vec<(f64, u64)> =
            self.buckets().map(|(bound, count)| (bound.as_secs_f64(), count)).collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum().as_secs_f64(), self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lines_of(text: &str, metric: &str) -> Vec<String> {
        text.lines().filter(|line| line.starts_with(metric)).map(str::to_owned).collect()
    }

    #[test]
    fn codes_become_labels_in_order() {
        let mut stats = Stats::default();
        for status in [503, 403, 503] {
            stats.refused.add(status);
        }
        stats.close_codes_sent.add(1009);
        let text = Exposition::new(&stats).encode();
        assert_eq!(
            lines_of(&text, "wschat_connections_refused_total{"),
            [
                "wschat_connections_refused_total{reason=\"403\"} 1",
                "wschat_connections_refused_total{reason=\"503\"} 2"
            ]
        );
        assert_eq!(
            lines_of(&text, "wschat_close_codes_sent_total{"),
            ["wschat_close_codes_sent_total{code=\"1009\"} 1"]
        );
        assert!(text.contains("# TYPE wschat_connections_refused_total counter\n"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_seconds_ending_in_inf() {
        let mut stats = Stats::default();
        stats.loop_iteration.observe(Duration::from_micros(7));
        stats.loop_iteration.observe(Duration::from_micros(30));
        stats.loop_iteration.observe(Duration::from_secs(1));
        let text = Exposition::new(&stats).encode();
        let buckets = lines_of(&text, "wschat_loop_iteration_seconds_bucket");
        assert_eq!(buckets.len(), 15, "14 bounds and +Inf: {buckets:?}");
        assert_eq!(buckets[0], "wschat_loop_iteration_seconds_bucket{le=\"5e-06\"} 0");
        assert_eq!(buckets[1], "wschat_loop_iteration_seconds_bucket{le=\"1e-05\"} 1");
        assert_eq!(buckets[3], "wschat_loop_iteration_seconds_bucket{le=\"5e-05\"} 2");
        assert_eq!(buckets[13], "wschat_loop_iteration_seconds_bucket{le=\"0.1\"} 2");
        assert_eq!(buckets[14], "wschat_loop_iteration_seconds_bucket{le=\"+Inf\"} 3");
        assert_eq!(
            lines_of(&text, "wschat_loop_iteration_seconds_count"),
            ["wschat_loop_iteration_seconds_count 3"]
        );
        assert_eq!(
            lines_of(&text, "wschat_loop_iteration_seconds_sum"),
            ["wschat_loop_iteration_seconds_sum 1.000037"]
        );
    }

    #[test]
    fn units_and_totals_follow_the_naming_conventions() {
        let mut metrics = Exposition::new(&Stats { bytes_in: 12, ..Stats::default() });
        metrics.gauge("history", Some(Unit::Bytes), "Bytes of history", 99);
        let text = metrics.encode();
        assert!(text.contains("\nwschat_received_bytes_total 12\n"), "{text}");
        assert!(text.contains("\nwschat_history_bytes 99\n"), "{text}");
        assert!(text.contains("# TYPE wschat_flush_round_seconds histogram\n"), "{text}");
        assert!(text.contains("# TYPE wschat_start_time_seconds gauge\n"), "{text}");
    }
}
