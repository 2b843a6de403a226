//! Makes a throwaway certificate authority and a server certificate it signs, for `localhost` and
//! 127.0.0.1, with rcgen (ECDSA P-256, the key type browsers and the benchmark use): what the
//! scripts that run wschat over wss:// (Autobahn, the browser test, the benchmark) serve and trust.
//!
//! `cargo run --example tls_cert -- DIR` writes `DIR/ca.pem`, `DIR/cert.pem` and `DIR/key.pem`.
//! For tests and benchmarks only: the CA's key is thrown away, and nothing else should trust it.

use std::path::PathBuf;
use std::process::ExitCode;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: tls_cert DIR");
        return ExitCode::from(2);
    };
    match write(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tls_cert: {}: {error}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut authority = CertificateParams::new(Vec::<String>::new())?;
    authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    authority.distinguished_name.push(DnType::CommonName, "wschat throwaway test CA");
    let authority = CertifiedIssuer::self_signed(authority, KeyPair::generate()?)?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    server.distinguished_name.push(DnType::CommonName, "localhost");
    let key = KeyPair::generate()?;
    let certificate = server.signed_by(&key, &authority)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), authority.pem())?;
    std::fs::write(dir.join("cert.pem"), certificate.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    Ok(())
}
