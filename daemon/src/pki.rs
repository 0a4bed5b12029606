//! Certificates: the deployment CA, node bundles and reading identities from PEM.
//!
//! One private CA per deployment (`ca.pem`, `ca.key`) issues node bundles
//! (`node.pem`, `node.key`, `ca.pem`). A node's name is the certificate's common
//! name (repeated as a DNS subject alternative name); an admin node carries
//! [`ADMIN_OU`] as its organizational unit. The CA fingerprint is the cluster id.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use officesync_protocol::names::{validate_node_name, NameError};
use officesync_protocol::signing::Scheme;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::time::ASN1Time;

/// Organizational unit (OU) that marks an admin node's certificate.
pub const ADMIN_OU: &str = "officesync-admin";
/// Common name of the deployment CA.
pub const CA_COMMON_NAME: &str = "officesync CA";
/// File name of the CA certificate, in the CA directory and in every bundle.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the node certificate in a bundle.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of the node private key in a bundle.
pub const NODE_KEY_FILE: &str = "node.key";
/// Default validity of a node certificate, in days.
pub const DEFAULT_CERT_DAYS: u32 = 825;
/// Longest validity accepted for a node certificate, in days.
pub const MAX_CERT_DAYS: u32 = 36_500;

/// Validity of the CA certificate (10 years, leap days included), in days.
const CA_DAYS: i64 = 3_652;
/// How far into the past `not_before` is set, to tolerate clock skew.
const BACKDATE_SECS: i64 = 3_600;
const DAY_SECS: i64 = 86_400;
/// Mode of private key files.
const KEY_MODE: u32 = 0o600;
/// Mode of certificate files.
const CERT_MODE: u32 = 0o644;

/// Why a certificate operation failed. Every message is one line.
#[derive(Debug, Error)]
pub enum PkiError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file already exists and `force` was not given.
    #[error("{} already exists; refusing to overwrite it (fix: pass --force to replace it)", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// `init_ca` found a CA in the directory and `force` was not given.
    #[error("a deployment CA already exists in {} (ca.pem, ca.key); refusing to replace it: a new CA cuts off every office, since no node accepts certificates of another CA, until every node's certificate is reissued from the new CA and installed (fix: keep this CA and issue bundles from it with `officesync ca issue NAME --ca-dir {}`; to re-key the whole deployment on purpose, pass --force)", dir.display(), dir.display())]
    CaExists {
        /// The CA directory.
        dir: PathBuf,
    },
    /// The node name is not a valid node name.
    #[error("{0}")]
    InvalidName(#[from] NameError),
    /// The requested validity is out of range.
    #[error("invalid certificate validity of {0} days (fix: use 1..={MAX_CERT_DAYS} days)")]
    InvalidDays(u32),
    /// The PEM text holds no certificate.
    #[error("{what}: no PEM certificate found")]
    NoCertificate {
        /// What was read (a path or a description).
        what: String,
    },
    /// The PEM or DER data is not a well-formed X.509 certificate.
    #[error("{what}: malformed certificate: {detail}")]
    BadCertificate {
        /// What was read (a path or a description).
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The PEM data is not a usable private key.
    #[error("{what}: malformed private key: {detail}")]
    BadKey {
        /// What was read (a path or a description).
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The certificate does not name a valid node (missing or conflicting names).
    #[error("certificate does not carry a usable node name: {detail}")]
    BadIdentity {
        /// What is wrong.
        detail: String,
    },
    /// A private key does not belong to the certificate it is paired with.
    #[error("private key {key} does not belong to certificate {cert}")]
    KeyMismatch {
        /// The key (a path or a description).
        key: String,
        /// The certificate (a path or a description).
        cert: String,
    },
    /// The certificate used as a CA is not a CA certificate.
    #[error("{what} is not a CA certificate (no basic constraints CA:TRUE)")]
    NotCa {
        /// The certificate (a path or a description).
        what: String,
    },
    /// The certificate was not issued by the given CA.
    #[error("certificate {subject} was not issued by this CA ({detail})")]
    NotIssuedByCa {
        /// Subject of the certificate.
        subject: String,
        /// Why the chain does not hold.
        detail: String,
    },
    /// A certificate (node or CA) is expired or not yet valid.
    #[error("certificate {subject} is not valid now: valid from {not_before} until {not_after}")]
    NotValidNow {
        /// Subject of the certificate.
        subject: String,
        /// Start of validity, formatted.
        not_before: String,
        /// End of validity, formatted.
        not_after: String,
    },
    /// rcgen failed to build or sign a certificate or key.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A timestamp could not be represented in a certificate.
    #[error("time {0} (unix seconds) cannot be represented in a certificate")]
    Time(i64),
}

/// What `init_ca` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSummary {
    /// Path of the CA certificate (`ca.pem`).
    pub cert_path: PathBuf,
    /// Path of the CA private key (`ca.key`).
    pub key_path: PathBuf,
    /// SHA-256 of the CA certificate DER, lowercase hex: the cluster id.
    pub fingerprint: String,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

/// Options for [`issue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssueOptions {
    /// Mark the certificate as an admin node's (OU = [`ADMIN_OU`]).
    pub admin: bool,
    /// Replace an existing bundle in the output directory.
    pub force: bool,
    /// Validity in days from now (1..=[`MAX_CERT_DAYS`]).
    pub days: u32,
    /// The node key's algorithm.
    pub key_type: KeyType,
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions {
            admin: false,
            force: false,
            days: DEFAULT_CERT_DAYS,
            key_type: KeyType::Ed25519,
        }
    }
}

/// The algorithm of a node key: it signs TLS handshakes and every version the node writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// Ed25519: the default; peers verify its version signatures in batches.
    #[default]
    Ed25519,
    /// ECDSA P-256, as bundles of release 0.1.0 have (verified one by one, about four times
    /// the CPU of Ed25519 in a batch).
    EcdsaP256,
}

/// What `issue` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSummary {
    /// The node name in the certificate.
    pub name: String,
    /// Whether the certificate is an admin certificate.
    pub admin: bool,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Path of the node certificate (`node.pem`).
    pub cert_path: PathBuf,
    /// Path of the node private key (`node.key`).
    pub key_path: PathBuf,
    /// Path of the copy of the CA certificate (`ca.pem`).
    pub ca_path: PathBuf,
    /// Fingerprint of the issuing CA: the cluster id.
    pub ca_fingerprint: String,
}

/// The identity a node certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// Node name (the common name, equal to a DNS subject alternative name if any).
    pub name: String,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// Whether the subject carries OU = [`ADMIN_OU`].
    pub admin: bool,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

/// Makes a new deployment CA in `dir` (`ca.pem`, and `ca.key` with mode 0600).
///
/// Creates `dir` (mode 0700) if missing. Refuses to replace an existing CA
/// ([`PkiError::CaExists`]) unless `force`.
pub fn init_ca(dir: &Path, force: bool) -> Result<CaSummary, PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    create_dir(dir, 0o700)?;
    if !force && refuse_existing(&[&cert_path, &key_path]).is_err() {
        return Err(PkiError::CaExists {
            dir: dir.to_owned(),
        });
    }

    let now = unix_now();
    let not_before = now - BACKDATE_SECS;
    let not_after = now + CA_DAYS * DAY_SECS;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = asn1_time(not_before)?.to_datetime();
    params.not_after = asn1_time(not_after)?.to_datetime();

    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;

    write_file(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_file(&cert_path, cert.pem().as_bytes(), CERT_MODE)?;

    let parsed = parse_der(cert.der(), "new CA certificate")?;
    Ok(CaSummary {
        cert_path,
        key_path,
        fingerprint: fingerprint_der(cert.der()),
        serial_hex: hex(parsed.raw_serial()),
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// Issues a node bundle for `name` from the CA in `ca_dir` into `out`
/// (`node.pem`, `node.key` with mode 0600, and a copy of `ca.pem`).
///
/// Refuses to replace any existing bundle file unless `opts.force`.
pub fn issue(
    name: &str,
    ca_dir: &Path,
    out: &Path,
    opts: &IssueOptions,
) -> Result<IssuedSummary, PkiError> {
    if opts.days == 0 || opts.days > MAX_CERT_DAYS {
        return Err(PkiError::InvalidDays(opts.days));
    }
    let now = unix_now();
    let window = (now - BACKDATE_SECS, now + i64::from(opts.days) * DAY_SECS);
    issue_with_validity(name, ca_dir, out, opts, window)
}

/// [`issue`] with an explicit validity window `(not_before, not_after)` in unix seconds
/// instead of `opts.days` from now (which is ignored), e.g. an already expired or not yet
/// valid certificate for tests. The window must not be empty.
pub fn issue_with_validity(
    name: &str,
    ca_dir: &Path,
    out: &Path,
    opts: &IssueOptions,
    (not_before, not_after): (i64, i64),
) -> Result<IssuedSummary, PkiError> {
    validate_node_name(name)?;
    if not_after <= not_before {
        return Err(PkiError::InvalidDays(0));
    }

    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_pem = read_pem_file(&ca_cert_path)?;
    let ca_key_pem = read_pem_file(&ca_key_path)?;
    let ca_what = ca_cert_path.display().to_string();
    let ca_der = first_cert_der(&ca_pem, &ca_what)?;
    let ca = parse_der(&ca_der, &ca_what)?;
    if !ca.is_ca() {
        return Err(PkiError::NotCa { what: ca_what });
    }
    let ca_key = parse_key(&ca_key_pem, &ca_key_path.display().to_string())?;
    if !key_matches_parsed(&ca_key, &ca) {
        return Err(PkiError::KeyMismatch {
            key: ca_key_path.display().to_string(),
            cert: ca_what,
        });
    }
    let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key)?;

    let cert_path = out.join(NODE_CERT_FILE);
    let key_path = out.join(NODE_KEY_FILE);
    let ca_path = out.join(CA_CERT_FILE);
    if !opts.force {
        refuse_existing(&[&cert_path, &key_path, &ca_path])?;
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    if opts.admin {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, ADMIN_OU);
    }
    params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = asn1_time(not_before)?.to_datetime();
    params.not_after = asn1_time(not_after)?.to_datetime();

    let key = KeyPair::generate_for(match opts.key_type {
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
    })?;
    let cert = params.signed_by(&key, &issuer)?;

    create_dir(out, 0o755)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_file(&cert_path, cert.pem().as_bytes(), CERT_MODE)?;
    write_file(&ca_path, ca_pem.as_bytes(), CERT_MODE)?;

    let identity = identity_from_der(cert.der())?;
    Ok(IssuedSummary {
        name: identity.name,
        admin: identity.admin,
        serial_hex: identity.serial_hex,
        not_before: identity.not_before,
        not_after: identity.not_after,
        cert_path,
        key_path,
        ca_path,
        ca_fingerprint: fingerprint_der(&ca_der),
    })
}

/// Reads the node identity from the first certificate in `cert_pem`.
pub fn read_identity(cert_pem: &str) -> Result<CertIdentity, PkiError> {
    identity_from_der(&first_cert_der(cert_pem, "certificate")?)
}

/// Reads the node identity from a DER certificate (as presented by a TLS peer).
///
/// The name is the single common name; it must be a valid node name and, if
/// the certificate has DNS subject alternative names, one of them.
pub fn identity_from_der(der: &[u8]) -> Result<CertIdentity, PkiError> {
    let cert = parse_der(der, "certificate")?;
    let subject = cert.subject();
    let mut cns = subject.iter_common_name();
    let name = match (cns.next(), cns.next()) {
        (Some(cn), None) => cn.as_str().map_err(|e| PkiError::BadIdentity {
            detail: format!("common name is not a string ({e})"),
        })?,
        (None, _) => {
            return Err(PkiError::BadIdentity {
                detail: "no common name".to_owned(),
            })
        }
        (Some(_), Some(_)) => {
            return Err(PkiError::BadIdentity {
                detail: "more than one common name".to_owned(),
            })
        }
    };
    validate_node_name(name)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate {
            what: "certificate".to_owned(),
            detail: format!("subject alternative names: {e}"),
        })?;
    if let Some(san) = san {
        let dns: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(d) => Some(*d),
                _ => None,
            })
            .collect();
        if !dns.is_empty() && !dns.contains(&name) {
            return Err(PkiError::BadIdentity {
                detail: format!(
                    "common name {name:?} is not among its DNS names {}",
                    dns.join(", ")
                ),
            });
        }
    }
    let admin = subject
        .iter_organizational_unit()
        .any(|ou| ou.as_str() == Ok(ADMIN_OU));
    Ok(CertIdentity {
        name: name.to_owned(),
        serial_hex: hex(cert.raw_serial()),
        admin,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Lowercase hex SHA-256 of the first certificate's DER in `ca_pem`: the cluster id.
pub fn ca_fingerprint(ca_pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint_der(&first_cert_der(ca_pem, "CA certificate")?))
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Checks that the first certificate in `cert_pem` was issued and signed by
/// the CA in `ca_pem`, and that both are valid at `now_unix` (unix seconds).
pub fn verify_chain(cert_pem: &str, ca_pem: &str, now_unix: i64) -> Result<(), PkiError> {
    let cert_der = first_cert_der(cert_pem, "certificate")?;
    let ca_der = first_cert_der(ca_pem, "CA certificate")?;
    verify_chain_der(&cert_der, &ca_der, now_unix)
}

/// [`verify_chain`] on DER certificates.
pub fn verify_chain_der(cert_der: &[u8], ca_der: &[u8], now_unix: i64) -> Result<(), PkiError> {
    let (cert, ca) = issued_by(cert_der, ca_der)?;
    let now = asn1_time(now_unix)?;
    for c in [&ca, &cert] {
        let validity = c.validity();
        if !validity.is_valid_at(now) {
            return Err(PkiError::NotValidNow {
                subject: c.subject().to_string(),
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
            });
        }
    }
    Ok(())
}

/// Checks that the CA `ca_der` issued and signed `cert_der`, whatever their validity periods
/// (a version signed while a certificate was valid stays verifiable after it expires).
pub fn verify_issued_by(cert_der: &[u8], ca_der: &[u8]) -> Result<(), PkiError> {
    issued_by(cert_der, ca_der).map(drop)
}

/// The signature scheme and raw public key of the certificate `der`: an Ed25519 key (32
/// bytes) or an uncompressed P-256 point.
pub fn public_key_of(der: &[u8]) -> Result<(Scheme, Vec<u8>), PkiError> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    let cert = parse_der(der, "certificate")?;
    let spki = cert.public_key();
    let key = spki.subject_public_key.data.to_vec();
    let alg = &spki.algorithm;
    if alg.algorithm == OID_SIG_ED25519 {
        return Ok((Scheme::Ed25519, key));
    }
    let p256 = alg
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|oid| oid == OID_EC_P256);
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && p256 {
        return Ok((Scheme::EcdsaP256, key));
    }
    Err(PkiError::BadCertificate {
        what: "certificate".to_owned(),
        detail: format!(
            "key algorithm {} is neither Ed25519 nor ECDSA P-256",
            alg.algorithm
        ),
    })
}

/// The parsed certificate and CA when the CA issued and signed the certificate.
fn issued_by<'a>(
    cert_der: &'a [u8],
    ca_der: &'a [u8],
) -> Result<(X509Certificate<'a>, X509Certificate<'a>), PkiError> {
    let cert = parse_der(cert_der, "certificate")?;
    let ca = parse_der(ca_der, "CA certificate")?;
    let subject = cert.subject().to_string();
    if !ca.is_ca() {
        return Err(PkiError::NotCa {
            what: format!("CA certificate {}", ca.subject()),
        });
    }
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(PkiError::NotIssuedByCa {
            subject,
            detail: format!(
                "issuer is {:?}, CA is {:?}",
                cert.issuer().to_string(),
                ca.subject().to_string()
            ),
        });
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| PkiError::NotIssuedByCa {
            subject: subject.clone(),
            detail: format!("signature check failed: {e}"),
        })?;
    Ok((cert, ca))
}

/// True when the private key in `key_pem` is the key of the first certificate in `cert_pem`.
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> Result<bool, PkiError> {
    let key = parse_key(key_pem, "private key")?;
    let der = first_cert_der(cert_pem, "certificate")?;
    let cert = parse_der(&der, "certificate")?;
    Ok(key_matches_parsed(&key, &cert))
}

/// Reads a PEM file as text; the error names the path.
pub fn read_pem_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads every certificate (DER) in a PEM file, at least one; errors name the path.
pub fn load_cert_ders(path: &Path) -> Result<Vec<Vec<u8>>, PkiError> {
    let pem = read_pem_file(path)?;
    let what = path.display().to_string();
    let ders = cert_ders(&pem, &what)?;
    for der in &ders {
        parse_der(der, &what)?;
    }
    Ok(ders)
}

/// Loads a private key from a PEM file as PKCS#8 DER; errors name the path.
pub fn load_key_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    let pem = read_pem_file(path)?;
    let key = parse_key(&pem, &path.display().to_string())?;
    Ok(key.serialize_der())
}

/// Loads the node identity from the first certificate of a PEM file; errors name the path.
pub fn load_identity(path: &Path) -> Result<CertIdentity, PkiError> {
    let pem = read_pem_file(path)?;
    let der = first_cert_der(&pem, &path.display().to_string())?;
    identity_from_der(&der)
}

/// Current time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Every `CERTIFICATE` block of `pem` as DER; `what` names the source in errors.
fn cert_ders(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut ders = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::BadCertificate {
            what: what.to_owned(),
            detail: format!("bad PEM: {e}"),
        })?;
        if block.label == "CERTIFICATE" {
            ders.push(block.contents);
        }
    }
    if ders.is_empty() {
        return Err(PkiError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(ders)
}

/// The first `CERTIFICATE` block of `pem` as DER.
fn first_cert_der(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    let mut ders = cert_ders(pem, what)?;
    // `cert_ders` never returns an empty list (it errors instead).
    Ok(ders.swap_remove(0))
}

fn parse_der<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, PkiError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCertificate {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate {
            what: what.to_owned(),
            detail: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

fn parse_key(pem: &str, what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|e| PkiError::BadKey {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

fn key_matches_parsed(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    let spki = cert.public_key();
    key.subject_public_key_info() == spki.raw
        || key.public_key_raw() == &*spki.subject_public_key.data
}

/// A random positive 16-byte serial number (top bit clear, next bit set so
/// that the DER encoding keeps all 16 bytes).
fn random_serial() -> Result<SerialNumber, PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn asn1_time(unix: i64) -> Result<ASN1Time, PkiError> {
    ASN1Time::from_timestamp(unix).map_err(|_| PkiError::Time(unix))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), PkiError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })
}

fn refuse_existing(paths: &[&Path]) -> Result<(), PkiError> {
    for path in paths {
        if fs::symlink_metadata(path).is_ok() {
            return Err(PkiError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Writes `contents` to a fresh temporary file created with `mode`, then
/// renames it over `path`, so a key file never exists with a wider mode.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    write_atomic(path, contents, mode).map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Replaces `path` with `contents` atomically: a fresh temporary file beside it, created with
/// `mode` and synced, renamed over `path`, then the directory synced. A reader sees the old
/// file or the new one, never a part, and a secret never exists with a wider mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // A leftover from an earlier crash of this same pid is stale.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;
