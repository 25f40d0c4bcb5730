//! Certificates for the TLS tests, made by the test itself with `rcgen`:
//! a CA, teal's server certificate and proxies' client certificates,
//! written to a temporary directory. Nothing of it is committed.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

/// The name teal's server certificate carries, as Envoy's mTLS bootstraps
/// expect it (`envoy/edge-mtls.yaml`).
pub const SERVER_NAME: &str = "teal.internal";

/// A test CA and the files it signed.
pub struct Pki {
    /// Where the files are.
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The key (PEM).
    pub key: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl Pki {
    /// A new CA, named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("teal-pki-")
            .tempdir()
            .expect("tempdir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA self-signed");
        let ca = dir.path().join(format!("{name}-ca.crt"));
        std::fs::write(&ca, cert.pem()).expect("write CA");
        Pki {
            dir,
            ca,
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, file: &str, sans: Vec<SanType>, path: &Path) -> Pair {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pair = Pair {
            cert: path.join(format!("{file}.crt")),
            key: path.join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }

    /// teal's server certificate: [`SERVER_NAME`], `localhost` and
    /// `127.0.0.1`.
    pub fn server(&self, file: &str) -> Pair {
        let sans = vec![
            SanType::DnsName(SERVER_NAME.try_into().expect("ia5")),
            SanType::DnsName("localhost".try_into().expect("ia5")),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        self.sign(file, sans, self.dir.path())
    }

    /// A client certificate whose identity is the SPIFFE ID `spiffe`.
    pub fn spiffe(&self, file: &str, spiffe: &str) -> Pair {
        let sans = vec![SanType::URI(spiffe.try_into().expect("ia5"))];
        self.sign(file, sans, self.dir.path())
    }

    /// A client certificate with DNS names only.
    pub fn dns(&self, file: &str, names: &[&str]) -> Pair {
        let sans = names
            .iter()
            .map(|n| SanType::DnsName((*n).try_into().expect("ia5")))
            .collect();
        self.sign(file, sans, self.dir.path())
    }
}

/// The certificate (DER) a TLS server on `127.0.0.1:port` presents, with
/// `ca` as the only root, presenting `client` if given.
pub async fn served_certificate(port: u16, ca: &Path, client: Option<&Pair>) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA pem")).expect("add root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match client {
        Some(pair) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(&pair.cert)
                .expect("read cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pair.key).expect("key");
            config
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => config.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = connector
        .connect(
            rustls_pki_types::ServerName::try_from(SERVER_NAME).expect("name"),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a server certificate")
}
