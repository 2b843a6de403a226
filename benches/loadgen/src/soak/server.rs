//! The server under soak: started by the load generator with the soak's flags (so the checks know
//! the limits it runs with), watched from a thread that samples its memory, CPU and `/stats`, and
//! stopped with SIGTERM at the end, which must end it with status 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::procfs;

/// A running wschat, killed if still running when this is dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    /// Log lines at `warn` or `error`, counted by the log reader.
    warnings: Arc<AtomicU64>,
    /// Whether the log said "panicked".
    panicked: Arc<AtomicBool>,
    /// The first lines of the log that were warnings, for the report.
    log_path: String,
}

impl Server {
    /// Starts `binary` with `args` (which must bind port 0 and log at `info` or more) and waits
    /// for its `listening on` line. The whole log goes to `log_path`.
    pub fn start(binary: &str, args: &[String], log_path: &str) -> Result<Server, String> {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("cannot start {binary}: {error}"))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut log = std::fs::File::create(log_path).map_err(|error| format!("{log_path}: {error}"))?;
        let warnings = Arc::new(AtomicU64::new(0));
        let panicked = Arc::new(AtomicBool::new(false));
        let (listening, address) = mpsc::channel();
        let (count, panic) = (warnings.clone(), panicked.clone());
        // Reads the log for as long as the server runs, so it never blocks on a full pipe.
        thread::spawn(move || {
            let mut listening = Some(listening);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ")
                    && let Some(sender) = listening.take()
                {
                    let _ = sender.send(line[at + 13..].trim().to_owned());
                }
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("panicked") {
                    panic.store(true, Ordering::Relaxed);
                }
                let _ = writeln!(log, "{line}");
            }
        });
        let pid = child.id();
        let addr = match address.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().map_err(|error| format!("bad address {addr}: {error}"))?,
            Err(_) => {
                let _ = child.kill();
                return Err(format!("{binary} did not say where it listens within 20 s (log: {log_path})"));
            }
        };
        Ok(Server { child, addr, pid, warnings, panicked, log_path: log_path.to_owned() })
    }

    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::Relaxed)
    }

    pub fn log_path(&self) -> &str {
        &self.log_path
    }

    /// Whether the process is still running (it must be, all along).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit status within `limit` (`None` if it did not exit).
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let give_up = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status.code().unwrap_or(-1)),
                Ok(None) if Instant::now() < give_up => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /stats` over a fresh connection (which is itself one of the slots it counts).
pub fn stats(addr: SocketAddr) -> Result<Value, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|error| format!("/stats: {error}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|error| error.to_string())?;
    stream
        .write_all(b"GET /stats HTTP/1.1\r\nHost: soak\r\n\r\n")
        .map_err(|error| format!("/stats: {error}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|error| format!("/stats: {error}"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).map_err(|error| format!("/stats is not JSON ({error}): {response}"))
}

/// One look at the server.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the server started listening.
    pub at_secs: f64,
    pub rss_kib: Option<u64>,
    /// User + system CPU seconds since the server started.
    pub cpu_secs: Option<f64>,
    pub connections: Option<u64>,
    pub slab_slots: Option<u64>,
    pub timer_entries: Option<u64>,
    pub rooms: Option<u64>,
    pub rooms_without_members: Option<u64>,
    pub history_bytes: Option<u64>,
    pub slow_consumers_dropped: Option<u64>,
}

impl Sample {
    pub fn take(addr: SocketAddr, pid: u32, at_secs: f64) -> Sample {
        let stats = stats(addr).ok();
        let field = |name: &str| stats.as_ref().and_then(|stats| stats[name].as_u64());
        Sample {
            at_secs,
            rss_kib: procfs::rss_kib(pid),
            cpu_secs: procfs::cpu_seconds(pid),
            connections: field("connections"),
            slab_slots: field("slab_slots"),
            timer_entries: field("timer_entries"),
            rooms: field("rooms"),
            rooms_without_members: field("rooms_without_members"),
            history_bytes: field("history_bytes"),
            slow_consumers_dropped: field("slow_consumers_dropped"),
        }
    }
}

/// Samples the server every `every` from a thread of its own (so a slow `/stats` never stalls
/// the clients), until the receiver is dropped. `origin` is time zero of the samples.
pub fn watch(addr: SocketAddr, pid: u32, every: Duration, origin: Instant) -> mpsc::Receiver<Sample> {
    let (sender, samples) = mpsc::channel();
    thread::spawn(move || {
        let mut next = Instant::now();
        loop {
            let at_secs = origin.elapsed().as_secs_f64();
            if sender.send(Sample::take(addr, pid, at_secs)).is_err() {
                return;
            }
            next += every;
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    samples
}
