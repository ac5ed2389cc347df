//! TLS and mTLS on every listener: `--tls-cert FILE --tls-key FILE` (PEM)
//! and `--tls-client-ca FILE` (require and verify client certificates).
//!
//! One certificate serves every listener (data plane, Admin, HTTP/JSON,
//! metrics). [`ServerTls::load`] reads the files at start: a missing or
//! unparsable file, or a key that is not the certificate's, stops the server
//! with an error naming the flag and the file. [`ServerTls::watch`] then
//! re-reads the files every [`RELOAD_INTERVAL`]; when their bytes change it
//! builds new rustls configurations and swaps them in (an `ArcSwap`) for the
//! handshakes that follow; connections already open keep the certificate
//! they started with. A change that does not build (a half-written file, a
//! key that does not match yet) keeps the previous configuration, logs an
//! error and counts `tollgate_tls_reload_errors_total`; the next change is
//! tried again. A good one logs `TLS certificate reloaded` and counts
//! `tollgate_tls_reloads_total`. `tollgate_tls_cert_not_after_seconds` says
//! when the certificate served expires (`expiry.rs`).
//!
//! The listeners accept TCP connections and hand each to a handshake of its
//! own (`incoming.rs`), so a slow or silent client never holds up the others.

mod expiry;
mod incoming;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

pub use incoming::{TlsIncoming, TlsListener};

/// How often [`ServerTls::watch`] re-reads the certificate, key and client
/// CA files.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a TLS handshake may take before the connection is dropped (a
/// client that connects and sends nothing holds no slot longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of the server's TLS, from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// `--tls-key`: the leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `--tls-client-ca`: the CA certificates that sign client
    /// certificates (PEM); with it, every connection must present one.
    pub client_ca: Option<PathBuf>,
}

/// What a listener speaks inside TLS, offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: `h2` only (tonic serves HTTP/2 only).
    Grpc,
    /// HTTP/2 and HTTP/1.1 (`h2`, `http/1.1`): the HTTP/JSON API, the web
    /// console and metrics.
    Http,
}

/// The rustls configurations built from one reading of the files.
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// When the leaf certificate expires (seconds since the epoch), if its
    /// DER could be read.
    not_after: Option<i64>,
}

impl Configs {
    /// When the certificate expires, as RFC 3339.
    fn not_after_text(&self) -> Option<String> {
        let secs = u64::try_from(self.not_after?).ok()?;
        Some(humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string())
    }

    /// Sets `tollgate_tls_cert_not_after_seconds`, warns when the
    /// certificate has expired already, and says when it expires.
    fn publish_expiry(&self) -> Option<String> {
        let secs = self.not_after?;
        metrics::gauge!("tollgate_tls_cert_not_after_seconds").set(secs as f64);
        let text = self.not_after_text();
        if secs < crate::model::now_ms() as i64 / 1000 {
            tracing::warn!(not_after = text, "the TLS certificate has expired: clients will refuse it");
        }
        text
    }
}

/// The bytes of the files, as read once.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The server side of TLS: the configuration in force, shared by every
/// listener and swapped by [`watch`](Self::watch).
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<TlsFiles>,
    current: Arc<ArcSwap<Configs>>,
    /// What the files held when `current` was built (the watcher starts
    /// from it).
    loaded: Arc<Contents>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the files; the error names the flag and the file.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let contents = read(&files)?;
        let configs = build(&files, &contents)?;
        // Present from the start (at 0), so that an alert on them has a series.
        metrics::counter!("tollgate_tls_reloads_total").increment(0);
        metrics::counter!("tollgate_tls_reload_errors_total").increment(0);
        metrics::counter!("tollgate_tls_handshake_failures_total").increment(0);
        configs.publish_expiry();
        Ok(Self {
            files: Arc::new(files),
            current: Arc::new(ArcSwap::from_pointee(configs)),
            loaded: Arc::new(contents),
        })
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// When the certificate served now expires (RFC 3339), if known.
    pub fn not_after(&self) -> Option<String> {
        self.current.load().not_after_text()
    }

    /// Whether client certificates are required (`--tls-client-ca`).
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the configuration in force now, for one handshake.
    pub fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        let c = self.current.load();
        TlsAcceptor::from(match alpn {
            Alpn::Grpc => c.grpc.clone(),
            Alpn::Http => c.http.clone(),
        })
    }

    /// Starts the task that re-reads the files every `every` and swaps in
    /// what they hold when it changed and builds. It ends by itself once
    /// every clone of this `ServerTls` is gone.
    pub fn watch(&self, every: Duration) {
        let mut reloader = Reloader { files: self.files.clone(), last: self.loaded.clone(), last_error: None };
        let current: Weak<ArcSwap<Configs>> = Arc::downgrade(&self.current);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is now: the files were just read
            loop {
                tick.tick().await;
                let Some(current) = current.upgrade() else { return };
                // File reads block; a stuck network file system must not
                // hold a runtime thread.
                let checked = tokio::task::spawn_blocking(move || {
                    let outcome = reloader.check(&current);
                    (reloader, outcome)
                })
                .await;
                let Ok((r, outcome)) = checked else { return };
                reloader = r;
                match outcome {
                    Reload::Unchanged => {}
                    Reload::Reloaded(not_after) => {
                        metrics::counter!("tollgate_tls_reloads_total").increment(1);
                        tracing::info!(
                            not_after = %not_after.as_deref().unwrap_or("unknown"),
                            tls_cert = %reloader.files.cert.display(),
                            tls_key = %reloader.files.key.display(),
                            tls_client_ca = reloader.files.client_ca.as_ref().map(|p| p.display().to_string()),
                            "TLS certificate reloaded"
                        );
                    }
                    Reload::Failed(error) => {
                        metrics::counter!("tollgate_tls_reload_errors_total").increment(1);
                        tracing::error!(%error, "TLS reload failed; still serving the previous certificate");
                    }
                }
            }
        });
    }
}

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
enum Reload {
    /// The same bytes as last time (or the same error).
    Unchanged,
    /// New bytes, built and swapped in; when the new certificate expires.
    Reloaded(Option<String>),
    /// New bytes (or a new read error) that do not build; the configuration
    /// in force stays.
    Failed(String),
}

/// The watcher's memory: what it read last.
struct Reloader {
    files: Arc<TlsFiles>,
    /// The bytes read last, whether they built or not (a bad file is
    /// reported once, not every second).
    last: Arc<Contents>,
    /// The read error reported last, if the last read failed.
    last_error: Option<String>,
}

impl Reloader {
    /// Reads the files; swaps a new configuration into `current` when they
    /// changed and build.
    fn check(&mut self, current: &ArcSwap<Configs>) -> Reload {
        let contents = match read(&self.files) {
            Ok(c) => c,
            Err(e) if self.last_error.as_ref() == Some(&e) => return Reload::Unchanged,
            Err(e) => {
                self.last_error = Some(e.clone());
                return Reload::Failed(e);
            }
        };
        self.last_error = None;
        if contents == *self.last {
            return Reload::Unchanged;
        }
        let built = build(&self.files, &contents);
        self.last = Arc::new(contents);
        match built {
            Ok(configs) => {
                let not_after = configs.publish_expiry();
                current.store(Arc::new(configs));
                Reload::Reloaded(not_after)
            }
            Err(e) => Reload::Failed(e),
        }
    }
}

/// Reads the three files.
fn read(files: &TlsFiles) -> Result<Contents, String> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
    };
    Ok(Contents {
        cert: read("--tls-cert", &files.cert)?,
        key: read("--tls-key", &files.key)?,
        client_ca: files.client_ca.as_deref().map(|p| read("--tls-client-ca", p)).transpose()?,
    })
}

/// Builds the configurations of both ALPN kinds from the files' bytes.
fn build(files: &TlsFiles, c: &Contents) -> Result<Configs, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_flag = format!("--tls-cert {}", files.cert.display());
    let key_flag = format!("--tls-key {}", files.key.display());
    let certs = certificates(&c.cert).map_err(|e| format!("{cert_flag}: {e}"))?;
    let not_after = expiry::not_after_secs(&certs[0]);
    let key = PrivateKeyDer::from_pem_slice(&c.key)
        .map_err(|e| format!("{key_flag}: {}", pem_error(e, "private key (-----BEGIN PRIVATE KEY-----, RSA or EC)")))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match (&files.client_ca, &c.client_ca) {
        (Some(path), Some(pem)) => {
            let flag = format!("--tls-client-ca {}", path.display());
            let mut roots = RootCertStore::empty();
            for (i, cert) in certificates(pem).map_err(|e| format!("{flag}: {e}"))?.into_iter().enumerate() {
                roots.add(cert).map_err(|e| format!("{flag}: certificate {}: {e}", i + 1))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{flag}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let base = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{key_flag} is not the private key of the certificate in {cert_flag}")
        }
        e => format!("{cert_flag} with {key_flag}: {e}"),
    })?;
    let with_alpn = |protocols: &[&[u8]]| {
        let mut config = base.clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    Ok(Configs { grpc: with_alpn(&[b"h2"]), http: with_alpn(&[b"h2", b"http/1.1"]), not_after })
}

/// The certificates of a PEM file; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(e, "certificate (-----BEGIN CERTIFICATE-----)"))?;
    if certs.is_empty() {
        return Err("no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// A PEM error for people: what was expected, and what went wrong.
fn pem_error(e: pem::Error, expected: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {expected} in it"),
        pem::Error::IllegalSectionStart { line } => {
            format!("not valid PEM: bad line {:?}", String::from_utf8_lossy(&line))
        }
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("not valid PEM: the line -----END {}----- is missing", String::from_utf8_lossy(&end_marker))
        }
        e => format!("not valid PEM (expected {expected}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a leaf it signed for `127.0.0.1`, as PEM (cert, key).
    fn leaf(ca: &(rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>)) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca.1).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(params, key))
    }

    fn files(dir: &Path, ca: bool) -> TlsFiles {
        TlsFiles { cert: dir.join("tls.crt"), key: dir.join("tls.key"), client_ca: ca.then(|| dir.join("ca.crt")) }
    }

    #[test]
    fn errors_name_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), true);
        let err = ServerTls::load(f.clone()).unwrap_err();
        assert!(err.starts_with("--tls-cert ") && err.contains("tls.crt") && err.contains("cannot read"), "{err}");

        let authority = ca();
        let (cert, key) = leaf(&authority);
        std::fs::write(&f.cert, "not a certificate").unwrap();
        std::fs::write(&f.key, &key).unwrap();
        std::fs::write(f.client_ca.as_ref().unwrap(), authority.0.pem()).unwrap();
        let err = ServerTls::load(f.clone()).unwrap_err();
        assert!(err.starts_with("--tls-cert ") && err.contains("no certificate"), "{err}");

        std::fs::write(&f.cert, &cert).unwrap();
        std::fs::write(&f.key, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
        let err = ServerTls::load(f.clone()).unwrap_err();
        assert!(err.starts_with("--tls-key ") && err.contains("END PRIVATE KEY"), "{err}");

        let (_, other_key) = leaf(&authority);
        std::fs::write(&f.key, &other_key).unwrap();
        let err = ServerTls::load(f.clone()).unwrap_err();
        assert!(err.contains("is not the private key of the certificate in --tls-cert"), "{err}");

        std::fs::write(&f.key, &key).unwrap();
        std::fs::write(f.client_ca.as_ref().unwrap(), &key).unwrap();
        let err = ServerTls::load(f.clone()).unwrap_err();
        assert!(err.starts_with("--tls-client-ca ") && err.contains("no certificate"), "{err}");

        std::fs::write(f.client_ca.as_ref().unwrap(), authority.0.pem()).unwrap();
        ServerTls::load(f).expect("good files load");
    }

    #[test]
    fn a_change_is_swapped_in_once_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), false);
        let authority = ca();
        let (cert, key) = leaf(&authority);
        std::fs::write(&f.cert, &cert).unwrap();
        std::fs::write(&f.key, &key).unwrap();
        let tls = ServerTls::load(f.clone()).unwrap();
        let mut r = Reloader { files: tls.files.clone(), last: tls.loaded.clone(), last_error: None };
        let served = |tls: &ServerTls| Arc::as_ptr(&tls.current.load().grpc);
        let first = served(&tls);
        assert_eq!(r.check(&tls.current), Reload::Unchanged);

        // Half a rotation: the new certificate beside the old key.
        let (cert2, key2) = leaf(&authority);
        std::fs::write(&f.cert, &cert2).unwrap();
        assert!(matches!(r.check(&tls.current), Reload::Failed(e) if e.contains("not the private key")));
        assert_eq!(r.check(&tls.current), Reload::Unchanged, "a bad file is reported once");
        assert_eq!(served(&tls), first, "the old configuration stays");

        std::fs::write(&f.key, &key2).unwrap();
        assert!(matches!(r.check(&tls.current), Reload::Reloaded(Some(_))));
        assert_ne!(served(&tls), first);
        assert_eq!(r.check(&tls.current), Reload::Unchanged);

        std::fs::remove_file(&f.key).unwrap();
        assert!(matches!(r.check(&tls.current), Reload::Failed(e) if e.starts_with("--tls-key")));
        assert_eq!(r.check(&tls.current), Reload::Unchanged, "the same read error is reported once");
        std::fs::write(&f.key, &key2).unwrap();
        assert_eq!(r.check(&tls.current), Reload::Unchanged, "back to what is served");
    }
}
