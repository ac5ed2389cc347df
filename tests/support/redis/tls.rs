//! TLS material for the fixtures: a throwaway CA made in the test (with
//! `rcgen`), a server certificate for `127.0.0.1`/`localhost` and a client
//! certificate, written as PEM files that `redis-server`, `redis-cli` and
//! the product under test can read; and the `rustls` client configuration
//! the fixtures' own probes use.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::LOCALHOST;

/// Whether (and how) a fixture's servers speak TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP (`redis://`).
    #[default]
    Off,
    /// TLS only (`rediss://`; the plain port is off): clients verify the
    /// server against [`TlsFiles::ca_cert_path`]; the server does not ask
    /// for a client certificate (`tls-auth-clients no`).
    On,
    /// Like [`Tls::On`], and the servers also require a client certificate
    /// signed by the CA (`tls-auth-clients yes`): use
    /// [`TlsFiles::client_cert_path`] and [`TlsFiles::client_key_path`].
    Mutual,
}

/// The PEM files of a TLS fixture (in its temporary directory, removed with
/// it). One CA per fixture; the server certificate is valid for the IP
/// address `127.0.0.1` and the name `localhost`, and is also what the
/// servers present to each other (replication, cluster bus, sentinels).
pub struct TlsFiles {
    dir: PathBuf,
    ca_pem: String,
    client_config: Arc<rustls::ClientConfig>,
    mode: Tls,
}

const CA_CERT: &str = "ca.crt";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const CLIENT_CERT: &str = "client.crt";
const CLIENT_KEY: &str = "client.key";

impl TlsFiles {
    /// Makes a CA, a server and a client certificate and writes them to
    /// `dir` (created if missing). `mode` must not be [`Tls::Off`].
    pub(crate) fn generate(dir: &Path, mode: Tls) -> TlsFiles {
        assert_ne!(mode, Tls::Off, "TlsFiles::generate needs Tls::On or Tls::Mutual");
        fs::create_dir_all(dir).unwrap_or_else(|err| panic!("failed to create {}: {err}", dir.display()));
        let ca_key = KeyPair::generate().unwrap_or_else(|err| panic!("generating the test CA key failed: {err}"));
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name.push(DnType::CommonName, "tollgate test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .unwrap_or_else(|err| panic!("signing the test CA certificate failed: {err}"));
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |name: &str| {
            let key = KeyPair::generate().unwrap_or_else(|err| panic!("generating the test {name} key failed: {err}"));
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, format!("tollgate test {name}"));
            params.subject_alt_names = vec![
                SanType::IpAddress(LOCALHOST),
                SanType::DnsName("localhost".try_into().expect("`localhost` is a valid DNS name")),
            ];
            // Servers use their certificate as a client too (replication,
            // cluster bus, sentinels), so both purposes.
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params
                .signed_by(&key, &issuer)
                .unwrap_or_else(|err| panic!("signing the test {name} certificate failed: {err}"));
            (cert, key)
        };
        let (server_cert, server_key) = leaf("server");
        let (client_cert, client_key) = leaf("client");

        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            fs::write(&path, text).unwrap_or_else(|err| panic!("failed to write {}: {err}", path.display()));
        };
        write(CA_CERT, &ca_cert.pem());
        write(SERVER_CERT, &server_cert.pem());
        write(SERVER_KEY, &server_key.serialize_pem());
        write(CLIENT_CERT, &client_cert.pem());
        write(CLIENT_KEY, &client_key.serialize_pem());

        let client_config = client_config(
            Some(ca_cert.der().clone()),
            Some((client_cert.der().clone(), PrivatePkcs8KeyDer::from(client_key.serialize_der()).into())),
        );
        TlsFiles { dir: dir.to_path_buf(), ca_pem: ca_cert.pem(), client_config, mode }
    }

    /// The CA certificate (PEM) that signed the servers' certificates: what a
    /// client must trust.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// The CA certificate as PEM text.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate (PEM) signed by the CA, for [`Tls::Mutual`].
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.join(CLIENT_CERT)
    }

    /// The client certificate's private key (PKCS#8 PEM).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join(CLIENT_KEY)
    }

    /// Whether the servers require client certificates.
    pub fn mode(&self) -> Tls {
        self.mode
    }

    /// The client configuration of the fixtures' own probes.
    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client_config.clone()
    }

    /// `redis-server` options for a TLS-only server (`--port 0`) listening
    /// on `port`; `cluster` adds TLS on the cluster bus.
    pub(crate) fn server_args(&self, port: u16, cluster: bool) -> Vec<String> {
        let path = |file: &str| self.dir.join(file).display().to_string();
        let auth_clients = if self.mode == Tls::Mutual { "yes" } else { "no" };
        let mut args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(SERVER_CERT),
            "--tls-key-file".into(),
            path(SERVER_KEY),
            "--tls-ca-cert-file".into(),
            path(CA_CERT),
            "--tls-auth-clients".into(),
            auth_clients.into(),
            "--tls-replication".into(),
            "yes".into(),
        ];
        if cluster {
            args.extend(["--tls-cluster".into(), "yes".into()]);
        }
        args
    }

    /// `redis-cli` options to connect to the servers.
    pub(crate) fn cli_args(&self) -> Vec<String> {
        let path = |file: &str| self.dir.join(file).display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            path(CA_CERT),
            "--cert".into(),
            path(CLIENT_CERT),
            "--key".into(),
            path(CLIENT_KEY),
        ]
    }
}

/// A `rustls` client configuration with the `ring` provider (named
/// explicitly, so it works whatever other providers the build enables),
/// trusting `ca` (nothing when `None`) and presenting `client` when the
/// server asks for a certificate.
pub(crate) fn client_config(
    ca: Option<CertificateDer<'static>>,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add(ca).unwrap_or_else(|err| panic!("the test CA certificate is not a valid trust anchor: {err}"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|err| panic!("rustls rejected its default protocol versions: {err}"))
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert], key)
            .unwrap_or_else(|err| panic!("rustls rejected the test client certificate: {err}")),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}
