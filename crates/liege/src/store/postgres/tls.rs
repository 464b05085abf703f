//! TLS to PostgreSQL with rustls, configured the way libpq users already write it.
//!
//! The store URL's `sslmode` and `sslrootcert` parameters (or `PGSSLMODE` and `PGSSLROOTCERT`
//! when the URL has none) select, as in libpq:
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | not checked (as libpq without a root certificate) |
//! | `require` | always | not checked; with `sslrootcert`, checked like `verify-ca` (as libpq) |
//! | `verify-ca` | always | signed by a CA in `sslrootcert` |
//! | `verify-full` | always | signed by a CA in `sslrootcert` and issued for the host dialled |
//!
//! `sslrootcert` is a PEM file of one or more CA certificates (required by `verify-ca` and
//! `verify-full`; libpq's default `~/.postgresql/root.crt` is used when it exists). Every
//! connection the store opens — the pool's and the listener's — uses the same settings. The
//! parameters are removed from the URL before it reaches `tokio-postgres`, which does not know
//! the `verify-*` modes.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::{StoreError, StoreResult};

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS if the server offers it, else plaintext; the certificate is not checked.
    Prefer,
    /// TLS or fail; the certificate is not checked (unless a root certificate is given).
    Require,
    /// TLS, certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// TLS, chain checked and the certificate issued for the host name dialled.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` tries plaintext first; liege does not downgrade on purpose.
            other => {
                return Err(StoreError::Other(format!(
                    "sslmode={other} is not supported: use disable, prefer, require, verify-ca \
                     or verify-full"
                )))
            }
        })
    }
}

/// The TLS settings of a store URL, and the URL without them.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The mode in force.
    pub mode: SslMode,
    /// CA certificates to trust, if any.
    pub root_cert: Option<PathBuf>,
}

/// Splits `sslmode` and `sslrootcert` off `url` (URL or `key=value` form), falling back to
/// `PGSSLMODE`/`PGSSLROOTCERT`, then to libpq's defaults. Returns the URL to give
/// `tokio-postgres` and the settings.
pub(super) fn split(url: &str) -> StoreResult<(String, TlsSettings)> {
    split_with_env(url, |name| std::env::var(name).ok())
}

fn split_with_env(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> StoreResult<(String, TlsSettings)> {
    let (rest, mut params) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)
    } else {
        split_key_values(url)
    };
    let mode = params
        .remove("sslmode")
        .or_else(|| env("PGSSLMODE"))
        .unwrap_or_else(|| "prefer".into());
    let mode: SslMode = mode.parse()?;
    let root_cert = params
        .remove("sslrootcert")
        .or_else(|| env("PGSSLROOTCERT"))
        .map(PathBuf::from)
        .or_else(|| {
            let default = PathBuf::from(env("HOME")?).join(".postgresql/root.crt");
            default.exists().then_some(default)
        });
    Ok((rest, TlsSettings { mode, root_cert }))
}

/// `postgres://...?a=b&sslmode=x` → the URL without the two parameters, and them.
fn split_url(url: &str) -> (String, std::collections::HashMap<&'static str, String>) {
    let mut found = std::collections::HashMap::new();
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), found);
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                found.insert("sslmode", percent_decode(v));
            }
            "sslrootcert" => {
                found.insert("sslrootcert", percent_decode(v));
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, found)
}

/// `host=h sslmode=x` → the string without the two settings, and them (values without
/// spaces or quotes; quoted values are left for `tokio-postgres`).
fn split_key_values(s: &str) -> (String, std::collections::HashMap<&'static str, String>) {
    let mut found = std::collections::HashMap::new();
    let mut kept = Vec::new();
    for token in s.split_whitespace() {
        match token.split_once('=') {
            Some(("sslmode", v)) => {
                found.insert("sslmode", v.trim_matches('\'').to_string());
            }
            Some(("sslrootcert", v)) => {
                found.insert("sslrootcert", v.trim_matches('\'').to_string());
            }
            _ => kept.push(token),
        }
    }
    (kept.join(" "), found)
}

/// libpq's lenient decoding of a URL parameter: a `%` not followed by two hex digits stays.
fn percent_decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

impl TlsSettings {
    /// The `tokio-postgres` mode (the `verify-*` modes require TLS; the checking is ours).
    pub(super) fn pg_mode(&self) -> PgSslMode {
        match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }

    /// The connector every connection of the store uses.
    pub(super) fn connector(&self) -> StoreResult<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Other(format!("TLS setup: {e}")))?;
        let roots = match &self.root_cert {
            Some(path) => Some(load_roots(path)?),
            None => None,
        };
        let mode = match (self.mode, &roots) {
            // As libpq: `require` with a root certificate checks the chain.
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(StoreError::Other(format!(
                    "sslmode={} needs the CA certificate: set sslrootcert=PATH in the store \
                     URL (or PGSSLROOTCERT)",
                    if self.mode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                )))
            }
            (mode, _) => mode,
        };
        let config = match (mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (mode, roots) => {
                let chain = match roots.filter(|_| mode == SslMode::VerifyCa) {
                    Some(roots) => Some(
                        WebPkiServerVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider.clone(),
                        )
                        .build()
                        .map_err(|e| StoreError::Other(format!("TLS setup: {e}")))?,
                    ),
                    None => None,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lax { chain, provider }))
                    .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

fn load_roots(path: &std::path::Path) -> StoreResult<RootCertStore> {
    let bad = |why: String| StoreError::Other(format!("sslrootcert {}: {why}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The server check of every mode but `verify-full` (which uses rustls's own verifier):
/// with `chain` (`verify-ca`) the certificate must lead to a trusted CA, its name unchecked;
/// without (`prefer`, `require`: libpq's behaviour; use `verify-full` against an active
/// attacker) any certificate is taken. The handshake signature is checked either way, so the
/// session key belongs to the certificate shown.
#[derive(Debug)]
struct Lax {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lax {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn ssl_parameters_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, s) = split_with_env(
            "postgres://u:p@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
            no_env,
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/tmp/ca.pem")));

        let (rest, s) = split_with_env("host=h user=u sslmode=require dbname=d", no_env).unwrap();
        assert_eq!(rest, "host=h user=u dbname=d");
        assert_eq!(s.mode, SslMode::Require);

        let (rest, s) = split_with_env("postgres://h/db", no_env).unwrap();
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(s.mode, SslMode::Prefer, "libpq's default");
    }

    #[test]
    fn the_environment_is_the_fallback_and_unknown_modes_are_refused() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-ca".to_string()),
            "PGSSLROOTCERT" => Some("/etc/ca.pem".to_string()),
            _ => None,
        };
        let (_, s) = split_with_env("postgres://h/db", env).unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let (_, s) = split_with_env("postgres://h/db?sslmode=disable", env).unwrap();
        assert_eq!(s.mode, SslMode::Disable, "the URL wins");
        let e = split_with_env("postgres://h/db?sslmode=allow", no_env).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let s = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: None,
        };
        let e = s.connector().err().expect("refused");
        assert!(e.to_string().contains("sslrootcert"), "{e}");
    }
}
