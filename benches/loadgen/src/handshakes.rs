//! `loadgen tls-handshakes`: what rustls alone costs for one full handshake on this machine, the
//! way rustls's own benchmark measures it: a client and a server in memory, no sockets, the
//! server's share of the time only (its `read_tls`, `process_new_packets` and `write_tls`). The
//! figure to hold wschat's handshakes against, since rustls's published numbers come from another
//! machine (and perhaps another provider).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use serde_json::json;

#[derive(clap::Args)]
pub struct HandshakeArgs {
    /// The server's certificate chain (PEM), as for wschat's --tls-cert.
    #[arg(long)]
    cert: std::path::PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: std::path::PathBuf,
    /// The CA that signed it (PEM), for the client's check.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Seconds of the server's time to spend handshaking.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

pub fn run(args: &HandshakeArgs) -> Result<(), String> {
    let read =
        |path: &std::path::Path| std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()));
    let chain = CertificateDer::pem_slice_iter(&read(&args.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(&read(&args.key)?).map_err(|error| error.to_string())?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(&args.ca)?) {
        roots.add(ca.map_err(|error| error.to_string())?).map_err(|error| error.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The server as wschat builds it: TLS 1.3 and 1.2, no client certificates.
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| error.to_string())?;
    // A full handshake every time: TLS 1.3, no resumption.
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    let (server, client) = (Arc::new(server), Arc::new(client));
    let name = ServerName::try_from("localhost").map_err(|error| error.to_string())?;

    let budget = Duration::from_secs_f64(args.seconds);
    let mut server_time = Duration::ZERO;
    let mut handshakes = 0u64;
    let mut suite = String::new();
    let mut wire = Vec::new();
    while server_time < budget {
        let mut client =
            ClientConnection::new(client.clone(), name.clone()).map_err(|error| error.to_string())?;
        let mut server = ServerConnection::new(server.clone()).map_err(|error| error.to_string())?;
        while client.is_handshaking() || server.is_handshaking() {
            wire.clear();
            client.write_tls(&mut wire).map_err(|error| error.to_string())?;
            let started = Instant::now();
            server.read_tls(&mut wire.as_slice()).map_err(|error| error.to_string())?;
            server.process_new_packets().map_err(|error| error.to_string())?;
            wire.clear();
            server.write_tls(&mut wire).map_err(|error| error.to_string())?;
            server_time += started.elapsed();
            client.read_tls(&mut wire.as_slice()).map_err(|error| error.to_string())?;
            client.process_new_packets().map_err(|error| error.to_string())?;
        }
        if suite.is_empty() {
            suite = format!(
                "{:?} {:?}",
                server.protocol_version(),
                server.negotiated_cipher_suite().map(|s| s.suite())
            );
        }
        handshakes += 1;
    }
    let per_second = handshakes as f64 / server_time.as_secs_f64();
    eprintln!(
        "rustls alone, in memory: {handshakes} full handshakes ({suite}), {:.1} us of server time each = {per_second:.0} per second per core",
        server_time.as_secs_f64() * 1e6 / handshakes as f64
    );
    println!(
        "{}",
        json!({"tool": "loadgen", "scenario": "tls-handshakes", "handshakes": handshakes,
               "server_secs": server_time.as_secs_f64(), "server_handshakes_per_sec": per_second, "suite": suite})
    );
    Ok(())
}
