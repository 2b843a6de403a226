//! The chat's face for plain HTTP on the WebSocket port: the browser page at `/`, the counters
//! at `/stats` (JSON) and at `/metrics` (Prometheus).

use serde::Serialize;

use crate::handler::{RequestHead, Stats};
use crate::http;
use crate::metrics::{Exposition, Unit};

/// The whole browser client: HTML, CSS and JavaScript in one file, compiled into the binary.
const PAGE: &str = include_str!("../../web/index.html");

/// `GET /stats`: the reactor's counters plus the chat's own.
#[derive(Serialize)]
struct ChatStats<'a> {
    #[serde(flatten)]
    reactor: &'a Stats,
    /// Rooms that have members.
    rooms: usize,
    /// Rooms kept without members (for `--history-ttl`), so that their last members can resume.
    rooms_without_members: usize,
    /// Bytes of history kept across all rooms (bounded by `--history-memory`).
    history_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a ClusterFigures>,
}

/// The chat's own numbers, for `/stats` and `/metrics`.
pub struct Figures {
    pub rooms: usize,
    pub rooms_without_members: usize,
    pub history_bytes: usize,
    pub rate_limited_frames: u64,
    /// Only in a cluster (`--redis`).
    pub cluster: Option<ClusterFigures>,
}

/// A cluster node's state.
#[derive(Serialize)]
pub struct ClusterFigures {
    pub node: String,
    /// Whether the node reaches Redis (else `/healthz` is 503).
    pub available: bool,
    /// Why not, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answers the `GET` requests the chat knows; `None` leaves the rest to the reactor.
pub fn respond(chat: &Figures, request: &RequestHead, stats: &Stats) -> Option<Vec<u8>> {
    match request.path() {
        "/" => {
            let headers = [("Cache-Control", "no-cache")];
            Some(http::response(200, "OK", "text/html; charset=utf-8", &headers, PAGE.as_bytes()))
        }
        "/stats" => {
            let chat_stats = ChatStats {
                reactor: stats,
                rooms: chat.rooms,
                rooms_without_members: chat.rooms_without_members,
                history_bytes: chat.history_bytes,
                cluster: chat.cluster.as_ref(),
            };
            let body = serde_json::to_vec(&chat_stats)
                // Invariant: the struct holds only integers, strings and booleans.
                .expect("stats always serialize");
            Some(http::response(200, "OK", "application/json", &[("Cache-Control", "no-cache")], &body))
        }
        "/metrics" => Some(metrics(chat, stats).response()),
        _ => None,
    }
}

/// `GET /metrics`: the reactor's metrics plus the chat's own.
fn metrics(chat: &Figures, stats: &Stats) -> Exposition {
    let mut metrics = Exposition::new(stats);
    metrics.gauge("rooms", None, "Rooms that have members", chat.rooms as u64);
    metrics.gauge(
        "rooms_without_members",
        None,
        "Rooms kept without members for --history-ttl, so that their last members can resume",
        chat.rooms_without_members as u64,
    );
    metrics.gauge(
        "history",
        Some(Unit::Bytes),
        "Bytes of history kept across all rooms (bounded by --history-memory)",
        chat.history_bytes as u64,
    );
    if let Some(cluster) = &chat.cluster {
        metrics.gauge(
            "cluster_available",
            None,
            "1 while this node reaches the cluster's Redis (else /healthz is 503), 0 otherwise",
            u64::from(cluster.available),
        );
    }
    metrics.counter(
        "rate_limited_frames",
        None,
        "Frames dropped by --rate-limit, each answered with a rate_limited error",
        chat.rate_limited_frames,
    );
    metrics
}
