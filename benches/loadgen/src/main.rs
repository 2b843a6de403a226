//! `loadgen`: a single-threaded mio load generator for any server that speaks wschat's chat
//! protocol. See `docs/benchmarks.md` for the scenarios and what every figure means.
//!
//! Each run prints one JSON line on stdout (machine-readable) and a human table on stderr.

mod handshakes;
mod idle;
mod net;
mod plot;
mod procfs;
mod proto;
mod report;
mod room;
mod soak;
mod stats;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use net::Target;
use room::{ExtraNode, RoomSpec, Session, StepReport};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for WebSocket chat servers speaking the wschat protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N receivers and P publishers in one room; publishers send at a fixed open-loop rate.
    Fanout(FanoutArgs),
    /// C clients in one room, all sending (at an aggregate rate) and all receiving.
    Chat(ChatArgs),
    /// Open N connections, wait for every welcome, measure connection rate and server memory.
    Idle(IdleArgs),
    /// Full TLS handshakes with rustls alone, in memory: the server's cost per handshake on this
    /// machine, to hold the server's TLS handshake rate against.
    TlsHandshakes(handshakes::HandshakeArgs),
    /// Aggregate the JSON lines of several runs: side-by-side table, results file, SVG plot.
    Report(report::ReportArgs),
    /// Start wschat and hold it near its file limit for a long time under churn, chatter, a short
    /// heartbeat and bad actors; check every delivery, every cut-off, memory and leaks.
    Soak(soak::SoakArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Server URL, e.g. ws://127.0.0.1:9001/ or wss://localhost:9443/
    #[arg(long)]
    url: String,
    /// For wss://: the CA certificate(s) to trust, in PEM (only these; the server's certificate
    /// is checked for the URL's host).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// The server's pid: adds its CPU time (/proc/PID/stat) and memory (/proc/PID/status).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Another process whose CPU time to record, as LABEL=PID (repeatable): a cluster's Redis.
    #[arg(long = "cpu-pid", value_name = "LABEL=PID", value_parser = parse_labelled_pid)]
    cpu_pids: Vec<(String, u32)>,
    /// Name of the server under test, copied into the JSON.
    #[arg(long, default_value = "server")]
    label: String,
    /// Name of the benchmark case, copied into the JSON (for `report`).
    #[arg(long)]
    case: Option<String>,
    /// Repetition number, copied into the JSON (for `report`).
    #[arg(long, default_value_t = 0)]
    rep: u32,
    /// Most connections handshaking at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds allowed for opening every connection.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Allow a target that is not on the loopback interface.
    #[arg(long)]
    allow_non_loopback: bool,
    /// No human table on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct Load {
    /// Aggregate offered rate, messages per second (all publishers together).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of warm-up before the measured window (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds in the measured window.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Most seconds to wait, after the window, for messages in flight; later ones count as lost.
    #[arg(long, default_value_t = 2.0)]
    drain_timeout: f64,
    /// Step the rate up until p99 passes --p99-bound-ms or a message is lost.
    #[arg(long)]
    ramp: bool,
    /// Ramp rates in messages/s, comma-separated. The ramp stops at the first failing step (then
    /// refines), so the list only bounds it: if its last rate passes, the result is the list's
    /// cap, not the server's (the JSON's `stop_reason` says so).
    #[arg(long, value_delimiter = ',', default_value = "100,200,400,800,1600,3200,6400,12800,25600,51200")]
    rates: Vec<f64>,
    /// After the first failing ramp step, this many bisection steps (geometric) between the last
    /// passing rate and the failing one.
    #[arg(long, default_value_t = 2)]
    refine: u32,
    /// The ramp's latency bound on p99, milliseconds.
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// Warm-up seconds of each ramp step after the first (the first uses --warmup).
    #[arg(long, default_value_t = 0.5)]
    step_warmup: f64,
    /// Measured seconds of each ramp step.
    #[arg(long, default_value_t = 2.0)]
    step_duration: f64,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: Load,
    /// Members that only receive.
    #[arg(long, default_value_t = 1000)]
    receivers: usize,
    /// Members that publish (they also receive each other's messages).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value = "bench-fanout")]
    room: String,
    /// Another node of the same cluster (repeatable): receivers are spread round-robin over
    /// --url and these; publishers stay on --url.
    #[arg(long = "also-url", value_name = "URL")]
    also_urls: Vec<String>,
    /// The pid of each --also-url node, in the same order, for its CPU time.
    #[arg(long = "also-pid", value_name = "PID")]
    also_pids: Vec<u32>,
}

/// `LABEL=PID`.
fn parse_labelled_pid(text: &str) -> Result<(String, u32), String> {
    let (label, pid) = text.split_once('=').ok_or_else(|| format!("`{text}` is not LABEL=PID"))?;
    let pid = pid.parse().map_err(|_| format!("`{pid}` is not a pid"))?;
    Ok((label.to_owned(), pid))
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: Load,
    /// Members, all publishing and all receiving.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value = "bench-chat")]
    room: String,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Members per room.
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// Seconds to hold the connections open before reading the server's memory.
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("loadgen: cannot raise the open-files limit: {error}");
    }
    let result = match cli.command {
        Command::Fanout(args) => {
            if args.publishers == 0 {
                Err("--publishers must be at least 1".to_owned())
            } else {
                let params = json!({"receivers": args.receivers, "publishers": args.publishers,
                                    "room": args.room, "also_urls": args.also_urls});
                extra_nodes(&args, args.common.allow_non_loopback).and_then(|nodes| {
                    run_room(
                        &args.common,
                        &args.load,
                        (args.receivers, args.publishers, nodes),
                        &args.room,
                        "fanout",
                        params,
                        start,
                    )
                })
            }
        }
        Command::Chat(args) => {
            if args.clients < 2 {
                Err("--clients must be at least 2".to_owned())
            } else {
                let params = json!({"clients": args.clients, "room": args.room});
                run_room(
                    &args.common,
                    &args.load,
                    (0, args.clients, Vec::new()),
                    &args.room,
                    "chat",
                    params,
                    start,
                )
            }
        }
        Command::Idle(args) => run_idle(&args, start),
        Command::TlsHandshakes(args) => handshakes::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Soak(args) => soak::run(&args, start),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

fn header(common: &Common, scenario: &str, mode: &str, params: Value) -> Value {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    json!({
        "tool": "loadgen",
        "version": env!("CARGO_PKG_VERSION"),
        "scenario": scenario,
        "mode": mode,
        "label": common.label,
        "case": common.case.clone().unwrap_or_else(|| format!("{scenario}-{mode}")),
        "rep": common.rep,
        "url": common.url,
        "server_pid": common.server_pid,
        "unix_time": unix,
        "params": params,
    })
}

fn emit(record: &Value) {
    println!("{}", serde_json::to_string(record).expect("JSON values serialize"));
}

/// The fanout's `--also-url` nodes, with their pids.
impl Common {
    /// The server to load, with its TLS settings for wss://.
    fn target(&self) -> Result<Target, String> {
        let mut target = Target::parse(&self.url, self.allow_non_loopback)?;
        match (&self.tls_ca, target.secure) {
            (Some(ca), true) => target.trust(ca)?,
            (None, true) => return Err("a wss:// URL needs --tls-ca".to_owned()),
            (Some(_), false) => return Err("--tls-ca is for wss:// URLs".to_owned()),
            (None, false) => {}
        }
        Ok(target)
    }
}

fn extra_nodes(args: &FanoutArgs, allow_non_loopback: bool) -> Result<Vec<ExtraNode>, String> {
    if !args.also_pids.is_empty() && args.also_pids.len() != args.also_urls.len() {
        return Err("give one --also-pid per --also-url, or none".to_owned());
    }
    args.also_urls
        .iter()
        .enumerate()
        .map(|(index, url)| {
            let target = Target::parse(url, allow_non_loopback)?;
            Ok(ExtraNode { addr: target.addr, pid: args.also_pids.get(index).copied() })
        })
        .collect()
}

/// Runs a room scenario: `members` is (receivers, publishers, further nodes for receivers).
fn run_room(
    common: &Common,
    load: &Load,
    members: (usize, usize, Vec<ExtraNode>),
    room: &str,
    scenario: &str,
    mut params: Value,
    start: Instant,
) -> Result<(), String> {
    let target = common.target()?;
    let (receivers, publishers, extra_nodes) = members;
    let spec = RoomSpec {
        receivers,
        publishers,
        room: room.to_owned(),
        concurrency: common.concurrency,
        connect_timeout: Duration::from_secs_f64(common.connect_timeout),
        server_pid: common.server_pid,
        extra_nodes,
        others: common.cpu_pids.clone(),
    };
    let secs = Duration::from_secs_f64;
    let mut session = Session::new(&target, spec, start)?;
    let connect = session.connect()?;
    let mode = if load.ramp { "ramp" } else { "fixed" };
    let extra = if load.ramp {
        json!({"rates": load.rates, "refine": load.refine, "p99_bound_ms": load.p99_bound_ms,
               "warmup_secs": load.warmup, "step_warmup_secs": load.step_warmup,
               "step_duration_secs": load.step_duration, "drain_timeout_secs": load.drain_timeout})
    } else {
        json!({"rate": load.rate, "warmup_secs": load.warmup, "duration_secs": load.duration,
               "drain_timeout_secs": load.drain_timeout})
    };
    params
        .as_object_mut()
        .expect("params is an object")
        .extend(extra.as_object().expect("an object").clone());
    let mut record = header(common, scenario, mode, params);
    record["connect"] = serde_json::to_value(&connect).expect("serializes");
    if !load.ramp {
        let step =
            session.step(load.rate, secs(load.warmup), secs(load.duration), secs(load.drain_timeout))?;
        session.close();
        if !common.quiet {
            eprintln!("{scenario} against {} ({}), {} members", common.url, common.label, connect.members);
            print_steps(std::slice::from_ref(&step));
        }
        record["result"] = serde_json::to_value(&step).expect("serializes");
        emit(&record);
        return Ok(());
    }

    let judge = |step: &mut StepReport| {
        let pass = step.drained
            && step.lost == 0
            && step.disconnects == 0
            && step.duplicates == 0
            && step.latency_ms.count > 0
            && step.latency_ms.p99 <= load.p99_bound_ms;
        step.pass = Some(pass);
        pass
    };
    let mut steps: Vec<StepReport> = Vec::new();
    let mut best: Option<f64> = None;
    let mut first_fail: Option<f64> = None;
    let mut stop_reason =
        "every rate passed: the figure is the --rates list's cap, not the server's".to_owned();
    for (i, &rate) in load.rates.iter().enumerate() {
        recover(&mut session)?;
        let warmup = if i == 0 { load.warmup } else { load.step_warmup };
        let mut step =
            session.step(rate, secs(warmup), secs(load.step_duration), secs(load.drain_timeout))?;
        let pass = judge(&mut step);
        if !common.quiet {
            eprint!(
                "\r  ramp: {rate} msg/s: p99 {:.2} ms, lost {} {}        ",
                step.latency_ms.p99,
                step.lost,
                if pass { "pass" } else { "FAIL" }
            );
        }
        if !pass {
            stop_reason = failure_reason(&step, load.p99_bound_ms);
        }
        steps.push(step);
        if pass {
            best = Some(rate);
        } else {
            first_fail = Some(rate);
            break;
        }
    }
    if let (Some(mut low), Some(mut high)) = (best, first_fail) {
        for _ in 0..load.refine {
            let rate = ((low * high).sqrt()).round();
            if rate <= low || rate >= high {
                break;
            }
            recover(&mut session)?;
            let mut step = session.step(
                rate,
                secs(load.step_warmup),
                secs(load.step_duration),
                secs(load.drain_timeout),
            )?;
            if judge(&mut step) {
                low = rate;
                best = Some(rate);
            } else {
                high = rate;
            }
            if !common.quiet {
                eprint!(
                    "\r  ramp: refine {rate} msg/s: p99 {:.2} ms, lost {}        ",
                    step.latency_ms.p99, step.lost
                );
            }
            steps.push(step);
        }
    }
    session.close();
    if !common.quiet {
        eprintln!();
    }
    let best_step =
        best.and_then(|rate| steps.iter().find(|step| step.rate == rate && step.pass == Some(true)));
    let best_deliveries = best_step.map(|step| step.deliveries_per_sec);
    let heaviest = steps.iter().map(|step| step.loadgen_cpu_share).fold(0.0, f64::max);
    if !common.quiet {
        eprintln!(
            "{scenario} ramp against {} ({}), {} members, p99 bound {} ms",
            common.url, common.label, connect.members, load.p99_bound_ms
        );
        print_steps(&steps);
        match (best, best_deliveries) {
            (Some(rate), Some(deliveries)) => {
                eprintln!(
                    "highest passing rate: {rate} msg/s = {deliveries:.0} deliveries/s; stopped: {stop_reason}"
                )
            }
            _ => eprintln!("no rate passed; stopped: {stop_reason}"),
        }
    }
    record["steps"] = serde_json::to_value(&steps).expect("serializes");
    record["max_pass_rate"] = json!(best);
    record["max_sustained_deliveries_per_sec"] = json!(best_deliveries);
    record["max_pass_server_cpu_us_per_delivery"] =
        json!(best_step.and_then(|step| step.server_cpu_us_per_delivery));
    if let Some(step) = best_step.filter(|step| !step.nodes.is_empty() || !step.others.is_empty()) {
        record["max_pass_nodes"] = serde_json::to_value(&step.nodes).expect("serializes");
        record["max_pass_others"] = serde_json::to_value(&step.others).expect("serializes");
    }
    record["max_pass_loadgen_cpu_share"] = json!(best_step.map(|step| step.loadgen_cpu_share));
    record["max_pass_loadgen_cpu_per_delivery_ns"] =
        json!(best_step.and_then(|step| step.loadgen_cpu_per_delivery_ns));
    record["first_fail_rate"] = json!(
        steps
            .iter()
            .filter(|step| step.pass == Some(false))
            .map(|step| step.rate)
            .fold(None, |min: Option<f64>, rate| Some(min.map_or(rate, |m| m.min(rate))))
    );
    record["stop_reason"] = json!(stop_reason);
    record["loadgen_max_cpu_share"] = json!(heaviest);
    record["max_other_cpu_share"] =
        json!(steps.iter().filter_map(|step| step.other_cpu_share).reduce(f64::max));
    emit(&record);
    Ok(())
}

fn failure_reason(step: &StepReport, bound: f64) -> String {
    let mut reasons = Vec::new();
    if step.latency_ms.p99 > bound {
        reasons.push(format!("p99 {:.1} ms > {bound} ms at {} msg/s", step.latency_ms.p99, step.rate));
    }
    if step.lost > 0 {
        reasons.push(format!("{} deliveries lost at {} msg/s", step.lost, step.rate));
    }
    if step.disconnects > 0 {
        reasons.push(format!("{} members disconnected: {:?}", step.disconnects, step.close_reasons));
    }
    if !step.drained {
        reasons.push("messages still in flight after the drain".to_owned());
    }
    if step.duplicates > 0 {
        reasons.push(format!("{} duplicates", step.duplicates));
    }
    if reasons.is_empty() {
        reasons.push("no latency samples".to_owned());
    }
    reasons.join("; ")
}

/// Makes the session fit for the next ramp step: waits for a backlog to drain, and reconnects
/// everyone if a member was dropped or the backlog does not clear.
fn recover(session: &mut Session) -> Result<(), String> {
    if session.healthy() {
        return Ok(());
    }
    if session.drain(Duration::from_secs(15))? && session.healthy() {
        return Ok(());
    }
    session.connect().map(|_| ())
}

fn print_steps(steps: &[StepReport]) {
    eprintln!(
        "{:>8} {:>11} {:>11} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>8} {:>9} {:>7} {:>7} {:>8} {:>5}",
        "msg/s",
        "offered d/s",
        "deliv d/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "lost",
        "disc",
        "srv CPU",
        "srv us/d",
        "lg CPU",
        "lg d/rd",
        "lg ns/d",
        "pass"
    );
    for step in steps {
        let pct = |share: Option<f64>| share.map_or("-".to_owned(), |s| format!("{:.0}%", s * 100.0));
        eprintln!(
            "{:>8.0} {:>11.0} {:>11.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>6} {:>8} {:>9} {:>7} {:>7.1} {:>8} {:>5}",
            step.rate,
            step.offered_deliveries_per_sec,
            step.deliveries_per_sec,
            step.latency_ms.p50,
            step.latency_ms.p99,
            step.latency_ms.p999,
            step.latency_ms.max,
            step.lost,
            step.disconnects,
            pct(step.server_cpu_share),
            step.server_cpu_us_per_delivery.map_or("-".to_owned(), |us| format!("{us:.3}")),
            pct(Some(step.loadgen_cpu_share)),
            step.loadgen_deliveries_per_read,
            step.loadgen_cpu_per_delivery_ns.map_or("-".to_owned(), |ns| format!("{ns:.0}")),
            match step.pass {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
    if let Some(step) = steps.last() {
        if !step.errors.is_empty() {
            eprintln!("error events: {:?}", step.errors);
        }
        if !step.close_reasons.is_empty() {
            eprintln!("closed: {:?}", step.close_reasons);
        }
        eprintln!("send lag: p99 {:.3} ms, max {:.3} ms", step.send_lag_ms.p99, step.send_lag_ms.max);
        if let Some(other) = steps.iter().filter_map(|step| step.other_cpu_share).reduce(f64::max) {
            eprintln!(
                "other processes used up to {:.0}% of a core during the measurements (noise)",
                other * 100.0
            );
        }
    }
}

fn run_idle(args: &IdleArgs, start: Instant) -> Result<(), String> {
    let common = &args.common;
    let target = common.target()?;
    let spec = idle::IdleSpec {
        connections: args.connections,
        concurrency: common.concurrency,
        room_size: args.room_size,
        connect_timeout: Duration::from_secs_f64(common.connect_timeout),
        hold: Duration::from_secs_f64(args.hold),
        server_pid: common.server_pid,
        others: common.cpu_pids.clone(),
    };
    let report = idle::run(&target, &spec, start)?;
    let params = json!({"connections": args.connections, "room_size": args.room_size,
                        "concurrency": common.concurrency, "hold_secs": args.hold});
    let mut record = header(common, "idle", "fixed", params);
    record["result"] = serde_json::to_value(&report).expect("serializes");
    if !common.quiet {
        let opt =
            |value: Option<f64>, digits: usize| value.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        eprintln!("idle against {} ({})", common.url, common.label);
        eprintln!(
            "  connections       {} of {} ({} failed) in {:.3} s",
            report.established, report.connections, report.failed, report.connect_secs
        );
        eprintln!("  connection rate   {:.0} /s", report.connections_per_sec);
        eprintln!(
            "  welcome latency   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            report.welcome_latency_ms.p50, report.welcome_latency_ms.p99, report.welcome_latency_ms.max
        );
        eprintln!(
            "  server RSS        {} -> {} KiB = {} bytes per connection",
            report.server_rss_before_kib.map_or("-".to_owned(), |v| v.to_string()),
            report.server_rss_after_kib.map_or("-".to_owned(), |v| v.to_string()),
            opt(report.server_rss_per_connection_bytes, 0)
        );
        eprintln!(
            "  server CPU        {} s connecting = {} us per connection; {} of a core while idle",
            opt(report.server_cpu_secs, 2),
            opt(report.server_cpu_us_per_connection, 1),
            report.server_idle_cpu_share.map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0))
        );
        for (label, other) in &report.others {
            eprintln!(
                "  {label:<17} {} s connecting = {} us per connection; {} bytes per connection",
                opt(other.cpu_secs, 2),
                opt(other.cpu_us_per_connection, 1),
                opt(other.rss_per_connection_bytes, 0)
            );
        }
        eprintln!(
            "  loadgen CPU       {:.2} s = {:.0}% of a core",
            report.loadgen_cpu_secs,
            report.loadgen_cpu_share * 100.0
        );
        if let Some(other) = report.other_cpu_share {
            eprintln!("  other processes   {:.0}% of a core while connecting (noise)", other * 100.0);
        }
        if !report.close_reasons.is_empty() {
            eprintln!("  failures          {:?}", report.close_reasons);
        }
    }
    emit(&record);
    if report.established == 0 {
        return Err("no connection was established".to_owned());
    }
    Ok(())
}
