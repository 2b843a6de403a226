//! The soak's verdict: every check with what it measured, the figures (memory minute by minute,
//! CPU, the probe's latency), the JSON report on stdout and in `--out-dir`, a human summary on
//! stderr, and the RSS plot.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::SoakArgs;
use super::actors::{FRAME_KINDS, Kind, KindTally};
use super::phases::Run;
use crate::plot::{RssPlot, rss_svg};
use crate::stats::Summary;

/// One pass/fail line.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Whether the server's memory stopped growing: over the last half of the load, the most it held
/// against what it held at the half-way mark.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Flatness {
    pub mid_kib: u64,
    pub max_last_half_kib: u64,
    pub growth_kib: i64,
    pub tolerance_kib: u64,
    pub flat: bool,
}

/// `samples` are (seconds, RSS KiB); the load ran from `start` to `end` seconds.
pub fn flatness(samples: &[(f64, u64)], start: f64, end: f64, fraction: f64, tolerance_mib: f64) -> Flatness {
    let mid = start + (end - start) / 2.0;
    let last_half: Vec<u64> =
        samples.iter().filter(|(at, _)| *at >= mid && *at <= end + 1.0).map(|s| s.1).collect();
    let Some(&mid_kib) = last_half.first() else { return Flatness::default() };
    let max_last_half_kib = last_half.iter().copied().max().unwrap_or(mid_kib);
    let tolerance_kib = ((mid_kib as f64 * fraction).max(tolerance_mib * 1024.0)) as u64;
    let growth_kib = max_last_half_kib as i64 - mid_kib as i64;
    Flatness {
        mid_kib,
        max_last_half_kib,
        growth_kib,
        tolerance_kib,
        flat: growth_kib <= tolerance_kib as i64,
    }
}

/// The value at each whole minute of the load (the sample nearest it), from minute 0 to the end.
fn per_minute<T: Copy>(samples: &[(f64, T)], start: f64, end: f64) -> Vec<(u32, T)> {
    let minutes = ((end - start) / 60.0).floor() as u32;
    (0..=minutes)
        .filter_map(|minute| {
            let at = start + 60.0 * f64::from(minute);
            samples
                .iter()
                .min_by(|a, b| (a.0 - at).abs().total_cmp(&(b.0 - at).abs()))
                .map(|&(_, value)| (minute, value))
        })
        .collect()
}

pub struct Report {
    json: Value,
    checks: Vec<Check>,
    summary: Vec<String>,
    plot: RssPlot,
}

impl Report {
    pub fn build(args: &SoakArgs, run: Run) -> Report {
        let world = &run.world;
        let (start, end) = (run.load_start_secs, run.load_end_secs);
        let rss: Vec<(f64, u64)> = run.samples.iter().filter_map(|s| Some((s.at_secs, s.rss_kib?))).collect();
        let cpu: Vec<(f64, f64)> =
            run.samples.iter().filter_map(|s| Some((s.at_secs, s.cpu_secs?))).collect();
        let flat = flatness(&rss, start, end, args.rss_tolerance, args.rss_tolerance_mib);
        let rss_minutes = per_minute(&rss, start, end);
        let cpu_minutes = per_minute(&cpu, start, end);
        let cpu_shares: Vec<f64> =
            cpu_minutes.windows(2).map(|pair| (pair[1].1 - pair[0].1) / 60.0).collect();
        let load_secs = end - start;
        let probe_ack = Summary::from_micros(&world.probe_ack);
        let probe_echo = Summary::from_micros(&world.probe_echo);
        let lost: u64 = world.healthy_lost.values().sum();
        let errors: u64 = world.healthy_errors.values().sum();
        let unanswered: u64 = world.clean_closes_unanswered.values().sum();
        let stopped_cut = world.bad.get(&Kind::StoppedReader).map_or(0, |tally| tally.cut_as_expected);
        let peak_slab = run.samples.iter().filter_map(|s| s.slab_slots).max();
        let peak_connections = run.samples.iter().filter_map(|s| s.connections).max();

        let check =
            |name: &str, passed: bool, detail: String| Check { name: name.to_owned(), passed, detail };
        let tally = &world.tally;
        let mut checks = vec![
            check("no healthy client lost", lost == 0, format!("{lost} lost: {:?}", world.healthy_lost)),
            check(
                "no delivery lost, duplicated, reordered or misdelivered",
                tally.clean() && world.ack_disorder == 0 && run.drained,
                format!(
                    "{} delivered; lost {}, duplicated {}, reordered {}, mismatched {}, wrong room {}, acks out of \
                     order {}, drained {}",
                    tally.delivered,
                    tally.lost,
                    tally.duplicated,
                    tally.reordered,
                    tally.mismatched,
                    tally.wrong_room,
                    world.ack_disorder,
                    run.drained
                ),
            ),
            check("no error event to a healthy client", errors == 0, format!("{:?}", world.healthy_errors)),
            check(
                "every clean close answered with the server's close 1000",
                unanswered == 0,
                format!("{} answered, others: {:?}", world.clean_closes, world.clean_closes_unanswered),
            ),
        ];
        let kinds = [Kind::StoppedReader, Kind::Slowloris, Kind::Flooder].into_iter().chain(FRAME_KINDS);
        for kind in kinds {
            let tally = world.bad.get(&kind).cloned().unwrap_or_default();
            checks.push(check(
                &format!("{kind:?}: {}", kind.rule()),
                tally.launched > 0 && tally.unexpected == 0 && tally.cut_as_expected == tally.launched,
                format!(
                    "{} launched, {} as the rule says, {} otherwise {:?}",
                    tally.launched, tally.cut_as_expected, tally.unexpected, tally.unexpected_reasons
                ),
            ));
        }
        checks.push(check(
            "the server counts every stopped reader as a slow consumer, and nobody else",
            run.slow_consumers_dropped == stopped_cut,
            format!(
                "slow_consumers_dropped {} for {stopped_cut} stopped readers",
                run.slow_consumers_dropped
            ),
        ));
        checks.push(check(
            "RSS flat over the last half of the load",
            flat.flat && flat.mid_kib > 0,
            format!(
                "{} KiB at the half-way mark, at most {} KiB after: {:+} KiB (tolerance {} KiB)",
                flat.mid_kib, flat.max_last_half_kib, flat.growth_kib, flat.tolerance_kib
            ),
        ));
        let slots = |end: &super::phases::EndCheck| {
            format!(
                "connections {} (expected {}), slab slots {}, timer entries {} ({} the chat's)",
                end.connections,
                end.expected_connections,
                end.slab_slots,
                end.timer_entries,
                end.handler_timers
            )
        };
        checks.push(check(
            "with the load over, one slab slot and one deadline per live connection (and the request asking)",
            run.live.settled,
            slots(&run.live),
        ));
        checks.push(check(
            "with everyone gone, nothing left but the request asking",
            run.closed.settled,
            slots(&run.closed),
        ));
        checks.push(check(
            "the server ran throughout, exited 0 on SIGTERM and never panicked",
            run.server_exit == Some(0) && !run.server_panicked,
            format!("exit {:?}, panicked {}", run.server_exit, run.server_panicked),
        ));
        let passed = checks.iter().all(|check| check.passed);

        let rss_start = rss.first().map(|s| s.1);
        let server_share = run.server_cpu_secs.map(|cpu| cpu / load_secs);
        let json = json!({
            "tool": "loadgen",
            "version": env!("CARGO_PKG_VERSION"),
            "scenario": "soak",
            "passed": passed,
            "params": {
                "duration_secs": args.duration, "connections": args.connections, "big_room": args.big_room,
                "room_size": args.room_size, "small_rate": args.small_rate, "big_rate": args.big_rate,
                "churn_rate": args.churn_rate, "churn_life_secs": [args.churn_min_life, args.churn_max_life],
                "slowloris": args.slowloris, "stopped_every_secs": args.stopped_every,
                "flood_every_secs": args.flood_every, "bad_frame_every_secs": args.bad_frame_every,
                "probe_rate": args.probe_rate, "firehose_rate": args.firehose_rate,
                "firehose_bytes": args.firehose_bytes, "server_flags": args.server_flags(),
            },
            "members": run.members, "small_rooms": run.small_rooms, "connect_secs": run.connect_secs,
            "load_secs": load_secs, "peak_sockets": run.peak_sockets,
            "peak_server_slab_slots": peak_slab, "peak_server_connections": peak_connections,
            "churn": run.churn, "deliveries": tally, "ack_disorder": world.ack_disorder,
            "foreign_messages": world.foreign, "drained": run.drained, "stragglers": run.stragglers,
            "healthy_lost": world.healthy_lost, "healthy_errors": world.healthy_errors,
            "clean_closes": world.clean_closes, "clean_closes_unanswered": world.clean_closes_unanswered,
            "bad_actors": world.bad.iter().map(|(kind, tally)| (format!("{kind:?}"), tally)).collect::<BTreeMap<String, &KindTally>>(),
            "slow_consumers_dropped": run.slow_consumers_dropped,
            "rss_kib": {"start": rss_start, "end": run.rss_end_kib, "per_minute": rss_minutes, "flatness": flat},
            "server_cpu": {"secs": run.server_cpu_secs, "share": server_share, "per_minute_share": cpu_shares},
            "loadgen_cpu_share": run.loadgen_cpu_secs / load_secs,
            "probe_ms": {"ack": probe_ack, "echo": probe_echo, "echo_per_minute": run.probe_minutes},
            "latency_ms": {"ack": Summary::from_micros(&world.ack_latency),
                           "delivery": Summary::from_micros(&world.delivery_latency)},
            "end_live": run.live, "end_closed": run.closed,
            "server": {"exit": run.server_exit, "panicked": run.server_panicked,
                       "warnings": run.server_warnings, "log": run.server_log},
            "samples": run.samples,
            "checks": checks,
        });

        let mut summary = vec![
            format!(
                "soak: {} s of load, {} members ({} small rooms of {}, one of {}), peak {} sockets (server slab {})",
                load_secs.round(),
                run.members,
                run.small_rooms,
                args.room_size,
                args.big_room,
                run.peak_sockets,
                peak_slab.map_or("?".to_owned(), |v| v.to_string())
            ),
            format!(
                "  churn: {} arrived, {} moved, left {} clean / {} reset / {} half frame + reset / {} half frame + FIN, {} deferred",
                run.churn.arrived,
                run.churn.moved,
                run.churn.left_clean,
                run.churn.left_reset,
                run.churn.left_half_frame_reset,
                run.churn.left_half_frame_fin,
                run.churn.deferred
            ),
            format!(
                "  server RSS (KiB): start {}, per minute {:?}, end {}",
                rss_start.map_or("?".to_owned(), |v| v.to_string()),
                rss_minutes.iter().map(|m| m.1).collect::<Vec<_>>(),
                run.rss_end_kib.map_or("?".to_owned(), |v| v.to_string())
            ),
            format!(
                "  server CPU: {} over the load; per minute {:?}",
                server_share.map_or("?".to_owned(), |s| format!("{:.1}% of a core", s * 100.0)),
                cpu_shares.iter().map(|s| format!("{:.1}%", s * 100.0)).collect::<Vec<_>>()
            ),
            format!(
                "  probe: ack p50 {:.2} / p99 {:.2} / max {:.2} ms; echo p50 {:.2} / p99 {:.2} / max {:.2} ms ({} samples)",
                probe_ack.p50,
                probe_ack.p99,
                probe_ack.max,
                probe_echo.p50,
                probe_echo.p99,
                probe_echo.max,
                probe_echo.count
            ),
            format!("  loadgen CPU: {:.1}% of a core", run.loadgen_cpu_secs / load_secs * 100.0),
        ];
        for check in &checks {
            summary.push(format!(
                "  [{}] {}: {}",
                if check.passed { "ok" } else { "FAIL" },
                check.name,
                check.detail
            ));
        }
        let plot = RssPlot {
            rss_mib: rss.iter().map(|&(at, kib)| ((at - start) / 60.0, kib as f64 / 1024.0)).collect(),
            sockets: run
                .samples
                .iter()
                .filter_map(|s| Some(((s.at_secs - start) / 60.0, s.slab_slots? as f64)))
                .collect(),
            load_minutes: load_secs / 60.0,
            tolerance_mib: (flat.mid_kib + flat.tolerance_kib) as f64 / 1024.0,
        };
        Report { json, checks, summary, plot }
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }

    pub fn failures(&self) -> Vec<String> {
        self.checks.iter().filter(|check| !check.passed).map(|check| check.name.clone()).collect()
    }

    /// The JSON line on stdout and in `--out-dir`, the summary on stderr, the plot.
    pub fn write(&self, args: &SoakArgs) -> Result<(), String> {
        let line = serde_json::to_string(&self.json).expect("JSON values serialize");
        println!("{line}");
        let path = format!("{}/report.json", args.out_dir);
        std::fs::write(&path, line + "\n").map_err(|error| format!("{path}: {error}"))?;
        for line in &self.summary {
            eprintln!("{line}");
        }
        let title = format!("Soak: server RSS and sockets over {:.0} minutes", self.plot.load_minutes);
        let default_svg = format!("{}/soak-rss.svg", args.out_dir);
        for svg in std::iter::once(&default_svg).chain(args.svg.as_ref()) {
            rss_svg(svg, &self.plot, &title)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_that_levels_off_is_flat_and_rss_that_keeps_growing_is_not() {
        let levels: Vec<(f64, u64)> =
            (0..=60).map(|s| (f64::from(s) * 10.0, 40_000 + 100 * s.min(20) as u64)).collect();
        let flat = flatness(&levels, 0.0, 600.0, 0.05, 4.0);
        assert_eq!((flat.mid_kib, flat.growth_kib, flat.flat), (42_000, 0, true));
        let grows: Vec<(f64, u64)> =
            (0..=60).map(|s| (f64::from(s) * 10.0, 40_000 + 200 * s as u64)).collect();
        let leak = flatness(&grows, 0.0, 600.0, 0.05, 4.0);
        assert_eq!((leak.mid_kib, leak.growth_kib), (46_000, 6_000));
        assert!(!leak.flat, "{leak:?}");
    }

    #[test]
    fn the_tolerance_is_a_fraction_or_a_floor_whichever_is_more() {
        let samples = [(0.0, 1000), (50.0, 1000), (100.0, 5000)];
        assert_eq!(flatness(&samples, 0.0, 100.0, 0.05, 4.0).tolerance_kib, 4096);
        assert!(flatness(&samples, 0.0, 100.0, 0.05, 4.0).flat);
        assert!(!flatness(&samples, 0.0, 100.0, 0.05, 1.0).flat);
    }

    #[test]
    fn minutes_take_the_nearest_sample() {
        let samples = [(-5.0, 1), (0.5, 2), (58.0, 3), (61.0, 4), (119.0, 5)];
        assert_eq!(per_minute(&samples, 0.0, 125.0), [(0, 2), (1, 4), (2, 5)]);
    }
}
