//! The server's TLS settings (`--tls-cert`, `--tls-key`): reading the PEM files, checking that
//! the pair can serve (a chain, a key that matches it, dates that include now), and building the
//! rustls `ServerConfig` every new connection starts from. The reactor loads it at start-up and
//! again on SIGHUP; the connections themselves are driven by `reactor/transport.rs`.
//!
//! The crypto provider is *ring*: it builds with cargo and the C compiler Rust already needs to
//! link, nothing more (aws-lc-rs also wants CMake or a longer C build on some targets).

mod validity;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::ring;
use rustls::server::UnbufferedServerConnection;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use validity::{Validity, utc, validity};

/// The most application bytes encrypted ahead of the socket, per connection: one full record, or
/// a quarter of `--max-send-buffer` if that is very small. The reactor encrypts only once the
/// socket has taken every record made before, so the ciphertext waiting is at most this plus one
/// record's framing: [`send_reserve`].
pub fn buffer_limit(max_send_buffer: usize) -> usize {
    (16 * 1024).min(max_send_buffer / 4)
}

/// The ciphertext one TLS connection can have waiting for its socket, taken out of
/// `--max-send-buffer` so that a slow TLS reader is bounded exactly like a plain one: its queue
/// gets the rest.
pub fn send_reserve(max_send_buffer: usize) -> usize {
    // A record adds 5 bytes of header and 16 of AEAD tag, plus 1 of content type in TLS 1.3 or
    // 8 of explicit nonce in TLS 1.2 (RFC 8446 section 5.2, RFC 5288 section 3): under 64.
    const RECORD_OVERHEAD: usize = 64;
    buffer_limit(max_send_buffer) + RECORD_OVERHEAD
}

/// A certificate and key that cannot serve, said in words an operator can act on. `Reactor::bind`
/// returns it inside an `io::Error`, which `main` looks for to exit with a status of its own.
#[derive(Debug)]
pub struct Unusable(pub String);

impl std::fmt::Display for Unusable {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Unusable {}

/// A certificate chain and key that passed the checks, and the rustls configuration built from
/// them.
pub struct Certificate {
    pub config: Arc<ServerConfig>,
    /// The end-entity certificate's validity, for the log.
    pub validity: Validity,
    /// Certificates in the chain, the end-entity one included.
    pub chain_length: usize,
}

impl Certificate {
    /// Reads and checks the pair at `cert_path` and `key_path`, at `now` (Unix seconds). The
    /// error says what is wrong in words an operator can act on.
    pub fn load(cert_path: &Path, key_path: &Path, now: i64) -> Result<Certificate, String> {
        let cert_pem = std::fs::read(cert_path)
            .map_err(|error| format!("cannot read the certificate {}: {error}", cert_path.display()))?;
        let key_pem = std::fs::read(key_path)
            .map_err(|error| format!("cannot read the private key {}: {error}", key_path.display()))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("{}: not a PEM certificate chain: {error}", cert_path.display()))?;
        let Some(end_entity) = chain.first() else {
            return Err(format!("{}: no CERTIFICATE in it", cert_path.display()));
        };
        let validity = validity(end_entity)
            .map_err(|problem| format!("{}: cannot read the certificate: {problem}", cert_path.display()))?;
        if now > validity.not_after {
            return Err(format!(
                "{}: the certificate expired on {}",
                cert_path.display(),
                utc(validity.not_after)
            ));
        }
        if now < validity.not_before {
            return Err(format!(
                "{}: the certificate is not valid before {}",
                cert_path.display(),
                utc(validity.not_before)
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|error| format!("{}: not a PEM private key: {error}", key_path.display()))?;
        let chain_length = chain.len();
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|error| format!("TLS settings: {error}"))?
            .with_no_client_auth()
            // rustls compares the key's public half with the certificate's here.
            .with_single_cert(chain, key)
            .map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the private key {} does not match the certificate {}",
                    key_path.display(),
                    cert_path.display()
                ),
                other => format!("{}: {other}", key_path.display()),
            })?;
        Ok(Certificate { config: Arc::new(config), validity, chain_length })
    }
}

/// The listener's TLS: where the pair is read from, and the configuration new connections get.
/// Connections keep the configuration they started with, so a reload never touches them.
pub struct Credentials {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub current: Certificate,
}

impl Credentials {
    pub fn new(cert_path: PathBuf, key_path: PathBuf, now: i64) -> Result<Credentials, String> {
        let current = Certificate::load(&cert_path, &key_path, now)?;
        Ok(Credentials { cert_path, key_path, current })
    }

    /// Reads the pair again from the same paths. A pair that fails the checks is refused and
    /// the current one kept.
    pub fn reload(&mut self, now: i64) -> Result<&Certificate, String> {
        self.current = Certificate::load(&self.cert_path, &self.key_path, now)?;
        Ok(&self.current)
    }

    /// A new connection's TLS session (rustls's unbuffered API: the reactor keeps the buffers).
    pub fn session(&self) -> Result<UnbufferedServerConnection, rustls::Error> {
        UnbufferedServerConnection::new(self.current.config.clone())
    }

    /// What the log says about the current pair.
    pub fn describe(&self) -> String {
        let certificate = &self.current;
        format!(
            "{} ({} certificate{} in the chain, valid until {}), key {}",
            self.cert_path.display(),
            certificate.chain_length,
            if certificate.chain_length == 1 { "" } else { "s" },
            utc(certificate.validity.not_after),
            self.key_path.display()
        )
    }
}
