//! A real `redis-server` for the cluster tests, on a free loopback port, with nothing saved to
//! disk, killed when dropped. It is spoken to in RESP over a raw socket, so the tests need no
//! Redis client library (and no `redis-cli`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{DEADLINE, ScratchDir, free_loopback_port};

/// One `redis-server` process; `restart` replaces it with a fresh, empty one on the same port.
pub struct RedisServer {
    child: Child,
    port: u16,
    /// Holds Redis's log (`redis.log`, printed if a test fails) and its working directory.
    scratch: ScratchDir,
}

impl RedisServer {
    /// Starts a Redis on a free loopback port and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_loopback_port())
    }

    /// Starts a Redis on `port` (taken from `free_loopback_port`) and waits until it answers PING.
    pub fn start_on(port: u16) -> RedisServer {
        let scratch = ScratchDir::new("redis");
        let child = RedisServer::spawn(port, &scratch);
        let mut redis = RedisServer { child, port, scratch };
        redis.wait_until_answering();
        redis
    }

    fn spawn(port: u16, scratch: &ScratchDir) -> Child {
        let port = port.to_string();
        Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&scratch.path)
            .arg("--logfile")
            .arg(scratch.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start redis-server (scripts/test.sh installs it): {error}"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address to give wschat's `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`...) to the Redis process, as kill(1) does.
    pub fn kill(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} redis-server failed");
    }

    /// Kills this Redis (if it still runs) and starts an empty one on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = RedisServer::spawn(self.port, &self.scratch);
        self.wait_until_answering();
    }

    /// Sends one command, e.g. `["CLIENT", "KILL", "TYPE", "pubsub"]`, and returns the reply as
    /// Redis wrote it (`":2\r\n"`, `"+OK\r\n"`...).
    pub fn command(&self, words: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(&resp_command(words)).unwrap();
        let mut reply = String::new();
        read_reply(&mut BufReader::new(stream), &mut reply);
        reply
    }

    /// Waits until Redis answers PING, failing with its log if it exits or the deadline passes.
    fn wait_until_answering(&mut self) {
        let give_up = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("redis-server exited with {status} at start-up:\n{}", self.log());
            }
            if self.answers_ping() {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "redis did not answer PING within {DEADLINE:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10)); // Polling a port; there is no event to wait for.
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut reply = [0u8; 7];
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (SIGSTOP) process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("redis-server log:\n{}", self.log());
        }
    }
}

/// A command as a RESP array of bulk strings.
fn resp_command(words: &[&str]) -> Vec<u8> {
    let mut command = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        command.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
    }
    command
}

/// Reads one whole RESP reply, appending it to `reply` as written: a line for `+`, `-` and `:`,
/// a line and its payload for a bulk string (`$`), a line and that many replies for an array (`*`).
fn read_reply(reader: &mut impl BufRead, reply: &mut String) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a reply from redis");
    assert!(line.ends_with("\r\n"), "redis hung up mid-reply: {reply}{line:?}");
    reply.push_str(&line);
    let count: i64 = line[1..].trim_end().parse().unwrap_or(0);
    match line.as_bytes()[0] {
        b'$' if count >= 0 => {
            let mut payload = vec![0u8; count as usize + 2]; // And its "\r\n".
            reader.read_exact(&mut payload).expect("read a bulk string from redis");
            reply.push_str(&String::from_utf8_lossy(&payload));
        }
        b'*' => (0..count).for_each(|_| read_reply(reader, reply)),
        _ => {}
    }
}
