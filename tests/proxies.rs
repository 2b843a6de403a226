//! wschat behind the reverse proxies of `deploy/`: a real nginx running `deploy/nginx.conf` and
//! `deploy/nginx-wschat.conf`, and a real Caddy running `deploy/Caddyfile`, each changed only in
//! its addresses. Clients connect through them from loopback addresses of their own (127.0.0.2,
//! 127.0.0.3), so the address the proxy reports differs from the proxy's own, 127.0.0.1.
//!
//! Needs `nginx` and `caddy` on the PATH (scripts/test.sh installs Debian's). Run alone with
//! `cargo test --release --test proxies`.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;

use common::{Client, ScratchDir, Server, connect_from, free_loopback_port, wait_until_accepting};
use serde_json::json;
use tungstenite::client::IntoClientRequest;

const FIRST_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const SECOND_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// A server behind a proxy on 127.0.0.1: `--trusted-proxy` as deploy/wschat.service sets it, and
/// a per-IP limit small enough to reach.
const BEHIND_A_PROXY: &[&str] = &["--trusted-proxy", "127.0.0.1/32", "--max-connections-per-ip", "2"];

#[test]
fn nginx_relays_a_chat_between_two_clients() {
    let server = Server::start(&[]);
    let nginx = Proxy::nginx(server.addr);
    two_clients_chat_through(&nginx);
}

#[test]
fn caddy_relays_a_chat_between_two_clients() {
    let server = Server::start(&[]);
    let caddy = Proxy::caddy(server.addr);
    two_clients_chat_through(&caddy);
}

#[test]
fn nginx_hands_wschat_the_client_address_and_the_per_ip_limit_counts_it() {
    let mut server = Server::start(BEHIND_A_PROXY);
    let nginx = Proxy::nginx(server.addr);
    the_client_address_comes_through(&nginx, &mut server);
}

#[test]
fn caddy_hands_wschat_the_client_address_and_the_per_ip_limit_counts_it() {
    let mut server = Server::start(BEHIND_A_PROXY);
    let caddy = Proxy::caddy(server.addr);
    the_client_address_comes_through(&caddy, &mut server);
}

#[test]
fn nginx_appends_the_client_address_to_x_forwarded_for_and_passes_a_refusal_on() {
    let head = upstream_sees_one_refused_upgrade(Proxy::nginx);
    // nginx keeps what the client wrote and appends the peer it saw: the last entry is the truth.
    assert!(head.contains("\r\nx-forwarded-for: 10.9.9.9, 127.0.0.2\r\n"), "{head}");
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
}

#[test]
fn caddy_replaces_x_forwarded_for_with_the_client_address_and_passes_a_refusal_on() {
    let head = upstream_sees_one_refused_upgrade(Proxy::caddy);
    // Caddy trusts no one by default: what the client wrote is dropped.
    assert!(head.contains("\r\nx-forwarded-for: 127.0.0.2\r\n"), "{head}");
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
}

#[test]
fn forwarding_headers_from_a_peer_that_is_not_a_trusted_proxy_are_ignored() {
    let mut server = Server::start(&["--trusted-proxy", "127.0.0.9/32"]);
    let mut request = server.url("/?name=mallory").into_client_request().unwrap();
    // Only strings: nothing is ever sent to 10.9.9.9.
    request.headers_mut().insert("X-Forwarded-For", "10.9.9.9".parse().unwrap());
    request.headers_mut().insert("Forwarded", "for=10.9.9.9".parse().unwrap());
    let client_address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
    let stream = connect_from(client_address, server.addr);
    let client_port = stream.local_addr().unwrap().port();
    let mut mallory = Client::upgrade(stream, request).expect("admitted");
    assert_eq!(mallory.recv_json()["type"], "welcome");

    let line = server.wait_for_log("opened a WebSocket at /?name=mallory");
    assert!(line.contains(&format!(" from 127.0.0.4:{client_port} opened")), "{line}");
    assert!(!line.contains("10.9.9.9"), "{line}");
}

/// Starts the proxy in front of a stand-in upstream that answers one request with 429, sends an
/// upgrade through it from 127.0.0.2 with a forged `X-Forwarded-For: 10.9.9.9`, checks that the
/// client gets the 429 and that the upgrade reached the upstream as one, and returns the request
/// head the upstream received, lowercased. What wschat will read, seen without wschat.
fn upstream_sees_one_refused_upgrade(start: fn(SocketAddr) -> Proxy) -> String {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = start(upstream.local_addr().unwrap());
    let stand_in = thread::spawn(move || {
        let (mut stream, _) = upstream.accept().unwrap();
        stream.set_read_timeout(Some(common::DEADLINE)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read the proxied request head");
            head.push(byte[0]);
        }
        let refusal = "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        stream.write_all(refusal.as_bytes()).unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    let mut request = format!("ws://{}/?name=amy", proxy.addr).into_client_request().unwrap();
    request.headers_mut().insert("X-Forwarded-For", "10.9.9.9".parse().unwrap());
    let stream = connect_from(FIRST_CLIENT, proxy.addr);
    assert_eq!(Client::upgrade(stream, request).err(), Some(429), "through {}", proxy.name);
    let head = stand_in.join().unwrap();
    assert!(head.starts_with("get /?name=amy http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    head
}

/// Two clients from different addresses get their welcome through `proxy` and a message each
/// way. Needs nothing of the server but the chat.
fn two_clients_chat_through(proxy: &Proxy) {
    let mut amy = proxy.join(FIRST_CLIENT, "/?name=amy").expect("amy admitted");
    let mut bob = proxy.join(SECOND_CLIENT, "/?name=bob").expect("bob admitted");
    assert_eq!(amy.recv_type("joined")["user"]["name"], "bob");

    amy.send_json(json!({"type": "message", "text": "hi bob"}));
    let message = bob.recv_type("message");
    assert_eq!((&message["from"]["name"], &message["text"]), (&json!("amy"), &json!("hi bob")));
    bob.send_json(json!({"type": "message", "text": "hi amy"}));
    let message = amy.recv_type("message");
    assert_eq!((&message["from"]["name"], &message["text"]), (&json!("bob"), &json!("hi amy")));
}

/// Through `proxy` the server logs the client's address, not the proxy's, and counts the
/// connections per IP by it: the address's third connection is refused with 429 while another
/// address is still admitted. The proxies send no port, so the server logs port 0.
fn the_client_address_comes_through(proxy: &Proxy, server: &mut Server) {
    let _amy = proxy.join(FIRST_CLIENT, "/?name=amy").expect("amy admitted");
    let line = server.wait_for_log("opened a WebSocket at /?name=amy");
    assert!(line.contains(" from 127.0.0.2:0 opened"), "{} logged {line:?}", proxy.name);

    let _ann = proxy.join(FIRST_CLIENT, "/?name=ann").expect("ann admitted");
    let third = proxy.join(FIRST_CLIENT, "/?name=abe");
    assert_eq!(third.err(), Some(429), "127.0.0.2's third connection through {}", proxy.name);
    let _bob = proxy.join(SECOND_CLIENT, "/?name=bob").expect("127.0.0.3 still admitted");
    let line = server.wait_for_log("opened a WebSocket at /?name=bob");
    assert!(line.contains(" from 127.0.0.3:0 opened"), "{} logged {line:?}", proxy.name);
}

/// A reverse proxy in the foreground, killed when dropped, with its files in a scratch directory.
struct Proxy {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    scratch: ScratchDir,
}

impl Proxy {
    /// nginx with deploy/nginx.conf's http-level part (the `map` and the upstream) and
    /// deploy/nginx-wschat.conf included in a plain-HTTP server block on a free loopback port.
    /// The TLS server blocks are the operator's; everything about WebSockets is in those two.
    fn nginx(upstream: SocketAddr) -> Proxy {
        let scratch = ScratchDir::new("nginx");
        let addr = loopback_with_free_port();
        let site = std::fs::read_to_string(deploy_file("nginx.conf")).unwrap();
        let (http_part, _servers) = site.split_once("\nserver {").expect("a server block");
        assert!(http_part.contains("server 127.0.0.1:9001;"), "the upstream's address moved");
        let http_part = http_part.replace("server 127.0.0.1:9001;", &format!("server {upstream};"));
        let dir = scratch.path.display();
        let config = format!(
            "pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             access_log {dir}/access.log;\n\
             client_body_temp_path {dir}/client_body;\n\
             proxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fastcgi;\n\
             uwsgi_temp_path {dir}/uwsgi;\n\
             scgi_temp_path {dir}/scgi;\n\
             {http_part}\n\
             server {{\n\
             listen {addr};\n\
             include {snippet};\n\
             }}\n\
             }}\n",
            snippet = deploy_file("nginx-wschat.conf").display(),
        );
        std::fs::write(scratch.join("nginx.conf"), config).unwrap();
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(&scratch.path)
            .arg("-c")
            .arg(scratch.join("nginx.conf"))
            .arg("-e")
            .arg(scratch.join("error.log"))
            .args(["-g", "daemon off; master_process off;"]);
        Proxy::start("nginx", command, addr, scratch)
    }

    /// Caddy running deploy/Caddyfile as it is, its placeholders set through the environment: a
    /// plain-HTTP site on a free loopback port, no admin endpoint, its data in the scratch dir.
    fn caddy(upstream: SocketAddr) -> Proxy {
        let scratch = ScratchDir::new("caddy");
        let addr = loopback_with_free_port();
        let mut command = Command::new("caddy");
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(deploy_file("Caddyfile"))
            .env("WSCHAT_SITE", format!("http://{addr}"))
            .env("WSCHAT_UPSTREAM", upstream.to_string())
            .env("WSCHAT_CADDY_BIND", addr.ip().to_string())
            .env("WSCHAT_CADDY_ADMIN", "off")
            .env("HOME", &scratch.path)
            .env("XDG_DATA_HOME", scratch.join("data"))
            .env("XDG_CONFIG_HOME", scratch.join("config"));
        Proxy::start("caddy", command, addr, scratch)
    }

    /// Starts the proxy with its output in `<scratch>/output.log` and waits until it accepts.
    fn start(name: &'static str, mut command: Command, addr: SocketAddr, scratch: ScratchDir) -> Proxy {
        let output = File::create(scratch.join("output.log")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|error| panic!("start {name} (scripts/test.sh installs it): {error}"));
        let mut proxy = Proxy { name, child, addr, scratch };
        proxy.wait_until_accepting();
        proxy
    }

    /// Waits for the proxy's port, failing with its log if it exits first.
    fn wait_until_accepting(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status} at start-up:\n{}", self.name, self.logs());
        }
        wait_until_accepting(self.addr);
    }

    /// Everything the proxy wrote: its output and, for nginx, its error log.
    fn logs(&self) -> String {
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        read(self.scratch.join("output.log")) + &read(self.scratch.join("error.log"))
    }

    /// Connects from `source` through the proxy and returns the client after its welcome, or the
    /// HTTP status the upgrade was refused with.
    fn join(&self, source: IpAddr, target: &str) -> Result<Client, u16> {
        let stream = connect_from(source, self.addr);
        let mut client = Client::upgrade(stream, format!("ws://{}{target}", self.addr))?;
        let welcome = client.recv_json();
        assert_eq!(welcome["type"], "welcome", "through {}: {welcome}", self.name);
        Ok(client)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{} logs:\n{}", self.name, self.logs());
        }
    }
}

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(name)
}

fn loopback_with_free_port() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_loopback_port())
}
