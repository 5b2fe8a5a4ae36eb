//! TLS for the connection to the cluster's database, set by the libpq parameters `sslmode` and
//! `sslrootcert` in `[cluster] postgres`, with libpq's meaning
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html>):
//!
//! | `sslmode`          | TLS                      | certificate checked            |
//! |--------------------|--------------------------|--------------------------------|
//! | `disable`          | never                    | -                              |
//! | `prefer` (default) | if the server offers it  | no; the chain if `sslrootcert` |
//! | `require`          | always                   | no; the chain if `sslrootcert` |
//! | `verify-ca`        | always                   | the chain                      |
//! | `verify-full`      | always                   | the chain and the host name    |
//!
//! The roots are the PEM file `sslrootcert` names or, without one (or with `system`, as in
//! libpq 16, where it also forces `verify-full`), the Mozilla set of `webpki-roots`: the roots
//! tickd's `http` jobs already trust (reqwest), the same on every machine, with no dependence on
//! a CA bundle being installed. libpq would read `~/.postgresql/root.crt` instead; a private CA
//! is named with `sslrootcert`.
//!
//! tokio-postgres parses the rest of the string, but knows only `disable`, `prefer` and
//! `require` and no `sslrootcert`: tickd takes both parameters out first, in the URL form and in
//! the `key=value` form, and sets tokio-postgres's mode itself.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The `sslmode` values tickd knows, for its messages.
const MODES: &str = "disable, prefer, require, verify-ca or verify-full";

/// A connection string tickd cannot use. The messages never repeat the string: it may hold a
/// password.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// tokio-postgres rejects the string (without tickd's parameters).
    #[error("not a PostgreSQL URL (postgres://user@host/database) or key=value string: {}", with_causes(.0))]
    Parse(#[source] tokio_postgres::Error),
    /// An `sslmode` tickd does not know (`allow` included: tokio-postgres cannot try plain first).
    #[error("unknown sslmode \"{0}\": use {MODES}")]
    UnknownMode(String),
    /// A parameter tickd handles whose value is not UTF-8 once percent-decoded.
    #[error("the value of {0} is not UTF-8 once percent-decoded")]
    NotUtf8(&'static str),
    /// `sslrootcert=system` with a mode weaker than `verify-full`, which libpq 16 refuses: anyone
    /// can get a certificate from a public CA for a name they control.
    #[error("sslrootcert=system needs sslmode=verify-full (a public CA vouches for names, not for your database), not {0}")]
    SystemRootsNeedVerifyFull(&'static str),
    /// The root certificate file cannot be read.
    #[error("cannot read sslrootcert {}: {source}", path.display())]
    ReadRoots {
        /// The file `sslrootcert` names.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The root certificate file is not PEM certificates that rustls accepts as roots.
    #[error("sslrootcert {}: {reason}", path.display())]
    BadRoots {
        /// The file `sslrootcert` names.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refuses the settings (it does not, with ring and its default protocol versions).
    #[error("cannot set up TLS: {0}")]
    Rustls(#[source] rustls::Error),
}

/// `err` and its causes, `: `-separated: tokio-postgres's errors show only their kind ("error
/// performing TLS handshake", "db error"), the reason is in the causes.
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

/// The `sslmode` values, as libpq names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain only.
    Disable,
    /// TLS if the server offers it, else plain.
    Prefer,
    /// TLS, the certificate unchecked (unless `sslrootcert` is given).
    Require,
    /// TLS, the chain checked against the roots.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(TlsError::UnknownMode(other.to_owned())),
        })
    }
}

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing (the handshake's signatures still are).
    Nothing,
    /// That it chains to a root.
    Chain,
    /// That it chains to a root and names the host.
    ChainAndName,
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// `webpki-roots`: no `sslrootcert`, or `sslrootcert=system`.
    System,
    /// The PEM file `sslrootcert` names.
    File(PathBuf),
}

/// The cluster's database as tickd connects to it: tokio-postgres's settings, and the TLS
/// settings it cannot express.
#[derive(Debug)]
pub struct Target {
    /// Everything but `sslmode` and `sslrootcert`, with tokio-postgres's mode set from `mode`.
    pub config: tokio_postgres::Config,
    /// What the connector checks of the certificate.
    pub check: Check,
    /// The roots it checks against (unused with [`Check::Nothing`]).
    pub roots: Roots,
}

impl Target {
    /// Parses a connection string, URL (`postgres://user@host/db?sslmode=verify-full`) or
    /// `key=value` (`host=h user=u sslmode=require`); reads no file.
    pub fn parse(s: &str) -> Result<Target, TlsError> {
        let (rest, own) = split_own_params(s)?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(TlsError::Parse)?;
        let system = own.root_cert.as_deref() == Some("system");
        let mode = match own.mode.as_deref() {
            Some(mode) => mode.parse()?,
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(TlsError::SystemRootsNeedVerifyFull(mode.name()));
        }
        let roots = match own.root_cert {
            Some(path) if !system => Roots::File(PathBuf::from(path)),
            _ => Roots::System,
        };
        // libpq checks the chain whenever it has a root file, in `prefer` and `require` too.
        let check = match (mode, &roots) {
            (SslMode::Disable, _) => Check::Nothing,
            (SslMode::VerifyFull, _) => Check::ChainAndName,
            (SslMode::VerifyCa, _) | (_, Roots::File(_)) => Check::Chain,
            _ => Check::Nothing,
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Target {
            config,
            check,
            roots,
        })
    }

    /// The TLS connector for `config.connect`, reading the root file now (at each connection, so
    /// a renewed CA file is picked up without a reload).
    pub fn connector(&self) -> Result<MakeRustlsConnect, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?;
        let mut config = match self.check {
            // `disable` never uses the connector; nothing to load for it either.
            Check::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
                .with_no_client_auth(),
            Check::Chain => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly {
                    roots: root_store(&self.roots)?,
                    signatures: AnyCertificate { provider },
                }))
                .with_no_client_auth(),
            Check::ChainAndName => builder
                .with_root_certificates(root_store(&self.roots)?)
                .with_no_client_auth(),
        };
        // As libpq 17 does: a server started for `sslnegotiation=direct` requires it, older
        // servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The values of tickd's own parameters (the last of each, as libpq takes).
#[derive(Debug, Default, PartialEq, Eq)]
struct OwnParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

impl OwnParams {
    /// Takes `key = value` if the key is tickd's; says whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.mode = Some(value),
            "sslrootcert" => self.root_cert = Some(value),
            _ => return false,
        }
        true
    }
}

/// `s` without `sslmode` and `sslrootcert`, and their values. A string that does not split the
/// way tokio-postgres's parser reads it is handed on whole, for that parser's message.
fn split_own_params(s: &str) -> Result<(String, OwnParams), TlsError> {
    match ["postgres://", "postgresql://"]
        .iter()
        .find_map(|prefix| s.strip_prefix(prefix).map(|body| (prefix.len(), body)))
    {
        Some((prefix, body)) => split_url(s, prefix, body),
        None => Ok(split_key_values(s)),
    }
}

/// The URL form: the query starts at the first `?` after the credentials (which end at the first
/// `@`, as tokio-postgres reads them), its pairs split on `&` and `=`, percent-encoded.
fn split_url(s: &str, prefix: usize, body: &str) -> Result<(String, OwnParams), TlsError> {
    let mut own = OwnParams::default();
    let after_credentials = body.find('@').map_or(0, |at| at + 1);
    let Some(query) = body[after_credentials..]
        .find('?')
        .map(|q| prefix + after_credentials + q)
    else {
        return Ok((s.to_owned(), own));
    };
    let mut kept = Vec::new();
    for pair in s[query + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = match &*percent_decode_str(key).decode_utf8_lossy() {
            "sslmode" => "sslmode",
            "sslrootcert" => "sslrootcert",
            _ => {
                kept.push(pair);
                continue;
            }
        };
        let value = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| TlsError::NotUtf8(name))?;
        own.take(name, value.into_owned());
    }
    let mut rest = s[..query].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, own))
}

/// The `key=value` form, read the way tokio-postgres's parser reads it (whitespace around `=`,
/// single quotes, backslash escapes); tickd's parameters are cut out, the rest kept verbatim.
fn split_key_values(s: &str) -> (String, OwnParams) {
    let mut own = OwnParams::default();
    let Some(params) = key_values(s) else {
        return (s.to_owned(), own);
    };
    let mut rest = String::with_capacity(s.len());
    let mut from = 0;
    for (key, value, span) in params {
        if matches!(key, "sslmode" | "sslrootcert") {
            rest.push_str(&s[from..span.start]);
            from = span.end;
            own.take(key, value);
        }
    }
    rest.push_str(&s[from..]);
    (rest, own)
}

/// Each `key=value` of `s` with its value unquoted and the byte range it spans; `None` where
/// tokio-postgres's parser would fail.
fn key_values(s: &str) -> Option<Vec<(&str, String, std::ops::Range<usize>)>> {
    let mut params = Vec::new();
    let mut it = s.char_indices().peekable();
    let position = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        it.peek().map_or(s.len(), |&(i, _)| i)
    };
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let start = position(&mut it);
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key = &s[start..position(&mut it)];
        if key.is_empty() {
            return Some(params);
        }
        skip_ws(&mut it);
        it.next_if(|&(_, c)| c == '=')?;
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match it.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.extend(it.next().map(|(_, c)| c)),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        params.push((key, value, start..position(&mut it)));
    }
}

/// The roots to check a chain against.
fn root_store(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let path = match roots {
        Roots::System => {
            return Ok(RootCertStore::from_iter(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
            ))
        }
        Roots::File(path) => path,
    };
    let bad = |reason: String| TlsError::BadRoots {
        path: path.clone(),
        reason,
    };
    let pem_error = |err: rustls::pki_types::pem::Error| match err {
        rustls::pki_types::pem::Error::Io(source) => TlsError::ReadRoots {
            path: path.clone(),
            source,
        },
        other => bad(format!("not PEM certificates ({other})")),
    };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(pem_error)? {
        let cert = cert.map_err(pem_error)?;
        store
            .add(cert)
            .map_err(|err| bad(format!("a certificate rustls cannot use as a root ({err})")))?;
    }
    if store.is_empty() {
        return Err(bad("holds no PEM certificate".to_owned()));
    }
    Ok(store)
}

/// Accepts any server certificate, for `prefer` and `require` without a root file: libpq encrypts
/// there without authenticating the server (a passive eavesdropper learns nothing; an active one
/// in the middle is not stopped). The handshake's signatures are still verified with the
/// provider, so the peer must hold the key of the certificate it sent.
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for AnyCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyCertificate")
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks that the certificate chains to a root but not which name it is for: `verify-ca`, and
/// `prefer` or `require` with a root file (libpq's behaviour, kept for compatibility there).
/// rustls's own verifier always checks the name, hence this one.
struct ChainOnly {
    roots: RootCertStore,
    /// Checks the handshake's signatures.
    signatures: AnyCertificate,
}

impl fmt::Debug for ChainOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainOnly")
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.signatures
                .provider
                .signature_verification_algorithms
                .all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    // The handshake's signatures are checked as for any certificate.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::{Host, SslMode as PgMode};

    fn parse(s: &str) -> Target {
        Target::parse(s).unwrap_or_else(|err| panic!("{s}: {err}"))
    }

    fn error(s: &str) -> String {
        match Target::parse(s).and_then(|target| target.connector().map(|_| target)) {
            Ok(target) => panic!("{s} is accepted: {target:?}"),
            Err(err) => err.to_string(),
        }
    }

    /// `(check, roots, tokio-postgres's mode)` of `s`.
    fn effect(s: &str) -> (Check, Roots, PgMode) {
        let target = parse(s);
        (target.check, target.roots, target.config.get_ssl_mode())
    }

    fn file(path: &str) -> Roots {
        Roots::File(PathBuf::from(path))
    }

    #[test]
    fn every_mode_means_what_it_means_in_libpq() {
        let url = "postgres://u@h/db";
        let cases = [
            ("", (Check::Nothing, Roots::System, PgMode::Prefer)),
            (
                "?sslmode=disable",
                (Check::Nothing, Roots::System, PgMode::Disable),
            ),
            (
                "?sslmode=prefer",
                (Check::Nothing, Roots::System, PgMode::Prefer),
            ),
            (
                "?sslmode=require",
                (Check::Nothing, Roots::System, PgMode::Require),
            ),
            (
                "?sslmode=verify-ca",
                (Check::Chain, Roots::System, PgMode::Require),
            ),
            (
                "?sslmode=verify-full",
                (Check::ChainAndName, Roots::System, PgMode::Require),
            ),
            // With a root file, `prefer` and `require` check the chain, as libpq's do...
            (
                "?sslmode=require&sslrootcert=/ca.pem",
                (Check::Chain, file("/ca.pem"), PgMode::Require),
            ),
            (
                "?sslrootcert=/ca.pem",
                (Check::Chain, file("/ca.pem"), PgMode::Prefer),
            ),
            (
                "?sslmode=verify-ca&sslrootcert=/ca.pem",
                (Check::Chain, file("/ca.pem"), PgMode::Require),
            ),
            (
                "?sslmode=verify-full&sslrootcert=/ca.pem",
                (Check::ChainAndName, file("/ca.pem"), PgMode::Require),
            ),
            // ...and `disable` ignores it.
            (
                "?sslmode=disable&sslrootcert=/ca.pem",
                (Check::Nothing, file("/ca.pem"), PgMode::Disable),
            ),
            // `system` (libpq 16) means verify-full unless said otherwise.
            (
                "?sslrootcert=system",
                (Check::ChainAndName, Roots::System, PgMode::Require),
            ),
            (
                "?sslrootcert=system&sslmode=verify-full",
                (Check::ChainAndName, Roots::System, PgMode::Require),
            ),
            // The last of a parameter counts.
            (
                "?sslmode=disable&sslmode=verify-ca",
                (Check::Chain, Roots::System, PgMode::Require),
            ),
        ];
        for (query, want) in cases {
            assert_eq!(effect(&format!("{url}{query}")), want, "{query}");
        }
    }

    #[test]
    fn the_url_form_loses_only_tickds_parameters() {
        let split = |s: &str| split_own_params(s).expect("splits");
        let (rest, own) = split(
            "postgres://u:pw@h:5433/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fmy%20ca.pem&connect_timeout=3",
        );
        assert_eq!(
            rest,
            "postgres://u:pw@h:5433/db?application_name=x&connect_timeout=3"
        );
        assert_eq!(
            own,
            OwnParams {
                mode: Some("verify-full".to_owned()),
                root_cert: Some("/tmp/my ca.pem".to_owned()),
            }
        );
        // Only tickd's: no `?` left behind.
        assert_eq!(
            split("postgresql://h/db?sslmode=require").0,
            "postgresql://h/db"
        );
        // No query, no path, a `?` in the password (the credentials end at the `@`).
        assert_eq!(
            split("postgres://u@h/db"),
            ("postgres://u@h/db".to_owned(), OwnParams::default())
        );
        assert_eq!(split("postgres://h?sslmode=require").0, "postgres://h");
        let target = parse("postgres://u:pa?ss@h:5433/db?sslmode=verify-ca&sslrootcert=/ca.pem");
        assert_eq!(target.config.get_password(), Some(&b"pa?ss"[..]));
        assert_eq!(target.config.get_hosts(), [Host::Tcp("h".to_owned())]);
        assert_eq!(target.config.get_ports(), [5433]);
        assert_eq!(target.config.get_dbname(), Some("db"));
        assert_eq!(
            (target.check, target.roots),
            (Check::Chain, file("/ca.pem"))
        );
        // The other parameters still reach tokio-postgres.
        let target = parse("postgres://h/db?sslmode=require&application_name=x");
        assert_eq!(target.config.get_application_name(), Some("x"));
    }

    #[test]
    fn the_key_value_form_loses_only_tickds_parameters() {
        let (rest, own) = split_key_values("host=h user=u sslmode=require dbname=d");
        assert_eq!(rest, "host=h user=u  dbname=d");
        assert_eq!(own.mode.as_deref(), Some("require"));
        // Spaces around `=`, quotes, escapes, as tokio-postgres (and libpq) read them.
        let (rest, own) = split_key_values(
            r"host=h sslrootcert = '/tmp/my ca.pem' sslmode=verify-ca password='it\'s' dbname=a\ b",
        );
        assert_eq!(own.root_cert.as_deref(), Some("/tmp/my ca.pem"));
        assert_eq!(own.mode.as_deref(), Some("verify-ca"));
        assert_eq!(rest, r"host=h   password='it\'s' dbname=a\ b");
        let (_, own) = split_key_values(r"sslrootcert=/tmp/a\ b.pem sslmode='verify-full'");
        assert_eq!(own.root_cert.as_deref(), Some("/tmp/a b.pem"));
        assert_eq!(own.mode.as_deref(), Some("verify-full"));

        let target = parse("host=h user=u sslmode=verify-full sslrootcert=/ca.pem");
        assert_eq!(target.config.get_hosts(), [Host::Tcp("h".to_owned())]);
        assert_eq!(target.config.get_user(), Some("u"));
        assert_eq!(
            (target.check, target.roots),
            (Check::ChainAndName, file("/ca.pem"))
        );
        assert_eq!(effect("host=h").0, Check::Nothing);
        assert_eq!(effect("host=h sslmode=disable").2, PgMode::Disable);
        // Malformed: handed on whole, for tokio-postgres to reject.
        assert_eq!(split_key_values("host=h sslmode").0, "host=h sslmode");
        assert!(error("host=h sslmode").starts_with("not a PostgreSQL URL"));
        assert!(error("host=h sslmode='require").starts_with("not a PostgreSQL URL"));
    }

    #[test]
    fn bad_parameters_are_named_and_the_password_never_shown() {
        for url in [
            "postgres://u:s3cret@h/db?sslmode=bogus",
            "host=h password=s3cret sslmode=bogus",
        ] {
            let msg = error(url);
            assert_eq!(
                msg,
                "unknown sslmode \"bogus\": use disable, prefer, require, verify-ca or verify-full"
            );
        }
        // libpq's `allow` (plain first, then TLS) has no tokio-postgres equivalent.
        assert!(error("postgres://h/db?sslmode=allow").starts_with("unknown sslmode \"allow\""));
        for weaker in ["verify-ca", "require", "prefer", "disable"] {
            let msg = error(&format!(
                "postgres://h/db?sslrootcert=system&sslmode={weaker}"
            ));
            assert!(
                msg.starts_with("sslrootcert=system needs sslmode=verify-full"),
                "{msg}"
            );
            assert!(msg.ends_with(weaker), "{msg}");
        }
        assert_eq!(
            error("postgres://h/db?sslrootcert=%FF"),
            "the value of sslrootcert is not UTF-8 once percent-decoded"
        );
        // What tokio-postgres rejects, it still rejects, without the password.
        for bad in [
            "mysql://u:s3cret@h/db",
            "postgres://u:s3cret@h/db?sslcert=/c.pem&sslmode=require",
            "postgres://u:s3cret@h:port/db",
        ] {
            let msg = error(bad);
            assert!(msg.starts_with("not a PostgreSQL URL"), "{msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
        }
        // With tokio-postgres's reason, which its own message leaves out.
        assert!(
            error("postgres://h/db?sslcert=/c.pem").ends_with("unknown option `sslcert`"),
            "{}",
            error("postgres://h/db?sslcert=/c.pem")
        );
    }

    /// A CA called `ca_name` and a certificate it signs for `names`.
    fn ca_and_leaf(ca_name: &str, names: &[&str]) -> (rcgen::Certificate, rcgen::Certificate) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &ca, &ca_key).expect("leaf");
        (ca, leaf)
    }

    #[test]
    fn root_files_are_read_with_the_path_in_every_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = |path: &std::path::Path| {
            format!(
                "postgres://h/db?sslmode=verify-full&sslrootcert={}",
                path.display()
            )
        };
        let missing = dir.path().join("missing.pem");
        let msg = error(&url(&missing));
        assert!(
            msg.starts_with(&format!("cannot read sslrootcert {}: ", missing.display())),
            "{msg}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        assert_eq!(
            error(&url(&empty)),
            format!("sslrootcert {}: holds no PEM certificate", empty.display())
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("write");
        let msg = error(&url(&garbage));
        assert!(
            msg.starts_with(&format!(
                "sslrootcert {}: not PEM certificates",
                garbage.display()
            )),
            "{msg}"
        );
        // Several certificates in one file.
        let (ca1, _) = ca_and_leaf("CA 1", &[]);
        let (ca2, _) = ca_and_leaf("CA 2", &[]);
        let both = dir.path().join("both.pem");
        std::fs::write(&both, format!("{}{}", ca1.pem(), ca2.pem())).expect("write");
        let store = root_store(&Roots::File(both.clone())).expect("two roots");
        assert_eq!(store.len(), 2);
        assert!(parse(&url(&both)).connector().is_ok());
        // `disable` reads no file.
        assert!(parse(&format!(
            "postgres://h/db?sslmode=disable&sslrootcert={}",
            missing.display()
        ))
        .connector()
        .is_ok());
        // The system roots.
        assert!(!root_store(&Roots::System).expect("webpki-roots").is_empty());
    }

    #[test]
    fn the_chain_check_ignores_the_name_and_the_full_check_does_not() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (ca, leaf) = ca_and_leaf("the CA", &["db.example"]);
        let (other_ca, _) = ca_and_leaf("another CA", &[]);
        let roots = |ca: &rcgen::Certificate| {
            let mut store = RootCertStore::empty();
            store.add(ca.der().clone()).expect("root");
            store
        };
        let verify = |verifier: &dyn ServerCertVerifier, name: &str| {
            verifier.verify_server_cert(
                leaf.der(),
                &[],
                &ServerName::try_from(name.to_owned()).expect("name"),
                &[],
                UnixTime::now(),
            )
        };
        let chain = ChainOnly {
            roots: roots(&ca),
            signatures: AnyCertificate {
                provider: provider.clone(),
            },
        };
        assert!(verify(&chain, "db.example").is_ok());
        assert!(
            verify(&chain, "127.0.0.1").is_ok(),
            "verify-ca checks no name"
        );
        let wrong = ChainOnly {
            roots: roots(&other_ca),
            signatures: AnyCertificate {
                provider: provider.clone(),
            },
        };
        assert!(matches!(
            verify(&wrong, "db.example"),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ));
        let full = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(&ca)),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        assert!(verify(&*full, "db.example").is_ok());
        assert!(
            verify(&*full, "other.example").is_err(),
            "verify-full checks the name"
        );
        let any = AnyCertificate { provider };
        assert!(verify(&any, "other.example").is_ok());
        assert!(!any.supported_verify_schemes().is_empty());
    }
}
