//! TLS for the tests: a certificate authority made on the spot with rcgen, server certificates
//! it signs (for `localhost` and 127.0.0.1, valid or not), written where `--tls-cert` and
//! `--tls-key` can read them, and a rustls client that trusts only that authority.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::{Client, DEADLINE, ScratchDir, Server};

/// A blocking TLS stream, as a client has it.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A test certificate authority, and a scratch directory for the files it writes.
pub struct Pki {
    authority: CertifiedIssuer<'static, KeyPair>,
    pub dir: ScratchDir,
}

/// A server certificate and its key, as PEM files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate, as the server will present it.
    pub der: CertificateDer<'static>,
}

impl Pair {
    /// The server flags that serve this pair.
    pub fn flags(&self) -> Vec<String> {
        let path = |path: &PathBuf| path.display().to_string();
        vec!["--tls-cert".into(), path(&self.cert), "--tls-key".into(), path(&self.key)]
    }
}

/// What a new certificate should be like.
#[derive(Clone, Copy)]
pub enum Validity {
    Current,
    Expired,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "wschat test CA");
        let authority = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { authority, dir: ScratchDir::new("tls") }
    }

    /// The authority's certificate in PEM, for clients that read a CA file.
    pub fn ca_pem(&self) -> String {
        self.authority.pem()
    }

    /// Signs a certificate for `localhost` and 127.0.0.1 named `name`, and writes it with its key
    /// to `<name>.pem` and `<name>.key`.
    pub fn issue(&self, name: &str, validity: Validity) -> Pair {
        let key = KeyPair::generate().unwrap();
        let pair = self.issue_for(name, validity, &key);
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }

    /// Like `issue`, but with another key in the key file than the one certified.
    pub fn issue_with_wrong_key(&self, name: &str) -> Pair {
        let pair = self.issue_for(name, Validity::Current, &KeyPair::generate().unwrap());
        std::fs::write(&pair.key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        pair
    }

    fn issue_for(&self, name: &str, validity: Validity, key: &KeyPair) -> Pair {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if let Validity::Expired = validity {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let certificate = params.signed_by(key, &self.authority).unwrap();
        let cert = self.dir.join(format!("{name}.pem"));
        std::fs::write(&cert, certificate.pem()).unwrap();
        Pair { cert, key: self.dir.join(format!("{name}.key")), der: certificate.der().clone() }
    }

    /// A client configuration that trusts this authority only, offering `versions`.
    pub fn client_config(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.authority.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// Connects to the server and completes the TLS handshake (TLS 1.3 or 1.2, as the server
    /// picks).
    pub fn connect(&self, server: &Server) -> TlsStream {
        self.connect_with(server, self.client_config(rustls::DEFAULT_VERSIONS))
    }

    pub fn connect_with(&self, server: &Server, config: Arc<ClientConfig>) -> TlsStream {
        let tcp = TcpStream::connect(server.addr).expect("connect to the server");
        self.handshake(tcp, config)
    }

    /// The TLS handshake over a connected TCP stream.
    pub fn handshake(&self, tcp: TcpStream, config: Arc<ClientConfig>) -> TlsStream {
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let session = ClientConnection::new(config, name).unwrap();
        let mut stream = StreamOwned::new(session, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
        }
        stream
    }

    /// A chat client over wss://, after its welcome.
    pub fn join(&self, server: &Server, target: &str) -> (Client<TlsStream>, serde_json::Value) {
        self.upgrade(self.connect(server), server, target)
    }

    /// Like `join`, with a small receive buffer (set before the connection exists, so that the
    /// window stays small): a client that does not read then fills the server's queue quickly.
    pub fn join_with_receive_buffer(
        &self,
        server: &Server,
        target: &str,
        bytes: usize,
    ) -> (Client<TlsStream>, serde_json::Value) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        socket.connect(&server.addr.into()).unwrap();
        let stream = self.handshake(socket.into(), self.client_config(rustls::DEFAULT_VERSIONS));
        self.upgrade(stream, server, target)
    }

    fn upgrade(
        &self,
        stream: TlsStream,
        server: &Server,
        target: &str,
    ) -> (Client<TlsStream>, serde_json::Value) {
        let url = format!("wss://localhost:{}{target}", server.addr.port());
        let (socket, response) = tungstenite::client(url, stream).expect("WebSocket handshake over TLS");
        assert_eq!(response.status(), 101);
        let mut client = Client { socket };
        let welcome = client.recv_json();
        assert_eq!(welcome["type"], "welcome", "first event is the welcome: {welcome}");
        (client, welcome)
    }

    /// Sends a raw HTTP request over TLS and returns the whole response.
    pub fn https(&self, server: &Server, request: &[u8]) -> String {
        let mut stream = self.connect(server);
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        // The server ends with close_notify; read_to_end sees it as the end.
        stream.read_to_end(&mut response).expect("read the response to its close_notify");
        String::from_utf8_lossy(&response).into_owned()
    }
}

/// A TLS 1.3 client that has taken its traffic secret out of rustls, to send records rustls's
/// client never would (a handshake message split across records).
pub struct RawTls13 {
    pub tcp: TcpStream,
    encrypter: Box<dyn rustls::crypto::cipher::MessageEncrypter>,
    sequence: u64,
}

impl RawTls13 {
    /// Connects over TLS 1.3, sends `request`, and takes over the connection's sending side.
    pub fn connect(pki: &Pki, server: &Server, request: &[u8]) -> RawTls13 {
        use rustls::{ConnectionTrafficSecrets, SupportedCipherSuite};

        let mut config = (*pki.client_config(&[&rustls::version::TLS13])).clone();
        config.enable_secret_extraction = true;
        let mut stream = pki.connect_with(server, Arc::new(config));
        stream.write_all(request).unwrap();
        stream.flush().unwrap();
        let StreamOwned { conn, sock, .. } = stream;
        let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
            panic!("not TLS 1.3");
        };
        let (sequence, secrets) = conn.dangerous_extract_secrets().expect("the traffic secret").tx;
        let (key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => panic!("an AEAD this test does not know"),
        };
        RawTls13 { tcp: sock, encrypter: suite.aead_alg.encrypter(key, iv), sequence }
    }

    /// Sends one encrypted record of `typ` holding `payload`.
    pub fn send(&mut self, typ: rustls::ContentType, payload: &[u8]) {
        use rustls::crypto::cipher::{OutboundChunks, OutboundPlainMessage};

        let payload = OutboundChunks::Single(payload);
        let message = OutboundPlainMessage { typ, version: rustls::ProtocolVersion::TLSv1_2, payload };
        let record = self.encrypter.encrypt(message, self.sequence).unwrap();
        self.sequence += 1;
        self.tcp.write_all(&record.encode()).unwrap();
    }
}
