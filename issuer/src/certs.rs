//! The signing identity of Apple Wallet passes: the Pass Type ID certificate and its key, plus
//! the Apple WWDR intermediate that every signature must carry. Loaded from PKCS#12 (including
//! files with the legacy RC2/3DES encryption that OpenSSL 3 refuses without its legacy
//! provider) or PEM; and, for demos and tests, generated as a development chain that no Apple
//! device trusts.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509, X509Name, X509NameBuilder};

/// Errors loading or creating certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: {1}")]
    Crypto(String, openssl::error::ErrorStack),
    #[error("{0}")]
    Invalid(String),
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// What signs a pass.
#[derive(Clone)]
pub struct SigningIdentity {
    pub cert: X509,
    pub key: PKey<Private>,
    /// The WWDR intermediate (and any further chain) included in every signature.
    pub chain: Vec<X509>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("subject", &self.cert.subject_name())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// From PEM files: the pass certificate, its private key and the WWDR intermediate.
    pub fn from_pem(cert: &Path, key: &Path, wwdr: &Path) -> Result<Self, CertError> {
        let c = X509::from_pem(&read(cert)?)
            .map_err(|e| CertError::Crypto(format!("{}", cert.display()), e))?;
        let k = PKey::private_key_from_pem(&read(key)?)
            .map_err(|e| CertError::Crypto(format!("{}", key.display()), e))?;
        let w = X509::stack_from_pem(&read(wwdr)?)
            .map_err(|e| CertError::Crypto(format!("{}", wwdr.display()), e))?;
        Self::checked(c, k, w)
    }

    /// From a PKCS#12 file (as exported from Keychain Access) and the WWDR intermediate (PEM).
    /// Files encrypted with the legacy algorithms OpenSSL 3 no longer enables by default are
    /// read through its legacy provider.
    pub fn from_pkcs12(p12: &Path, password: &str, wwdr: &Path) -> Result<Self, CertError> {
        let der = read(p12)?;
        let parse = || Pkcs12::from_der(&der).and_then(|p| p.parse2(password));
        let parsed = match parse() {
            Ok(p) => p,
            Err(_) => {
                // RC2-40 / 3DES need the legacy provider; keep it loaded for the process
                let legacy =
                    openssl::provider::Provider::try_load(None, "legacy", true).map_err(|e| {
                        CertError::Crypto("loading OpenSSL's legacy provider".into(), e)
                    })?;
                std::mem::forget(legacy);
                parse().map_err(|e| {
                    CertError::Crypto(format!("{} (wrong password?)", p12.display()), e)
                })?
            }
        };
        let (Some(cert), Some(key)) = (parsed.cert, parsed.pkey) else {
            return Err(CertError::Invalid(format!(
                "{}: the PKCS#12 file holds no certificate with its private key",
                p12.display()
            )));
        };
        let mut chain: Vec<X509> = parsed
            .ca
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        let w = X509::stack_from_pem(&read(wwdr)?)
            .map_err(|e| CertError::Crypto(format!("{}", wwdr.display()), e))?;
        chain.extend(w);
        Self::checked(cert, key, chain)
    }

    fn checked(cert: X509, key: PKey<Private>, chain: Vec<X509>) -> Result<Self, CertError> {
        let pubkey = cert
            .public_key()
            .map_err(|e| CertError::Crypto("pass certificate".into(), e))?;
        if !pubkey.public_eq(&key) {
            return Err(CertError::Invalid(
                "the private key does not belong to the pass certificate".into(),
            ));
        }
        if chain.is_empty() {
            return Err(CertError::Invalid(
                "no WWDR intermediate: Apple rejects signatures without it".into(),
            ));
        }
        Ok(SigningIdentity { cert, key, chain })
    }
}

/// A development chain (root → "WWDR" intermediate → pass certificate), for demos and tests.
/// Clearly named as such; no Apple device trusts it.
#[derive(Debug, Clone)]
pub struct DevChain {
    pub root: X509,
    pub identity: SigningIdentity,
}

fn name(cn: &str, extra: &[(&str, &str)]) -> Result<X509Name, openssl::error::ErrorStack> {
    let mut b = X509NameBuilder::new()?;
    b.append_entry_by_text("CN", cn)?;
    b.append_entry_by_text("O", "passpulse development (not trusted by Apple)")?;
    for (k, v) in extra {
        b.append_entry_by_text(k, v)?;
    }
    Ok(b.build())
}

fn issue(
    subject: &X509Name,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
) -> Result<X509, openssl::error::ErrorStack> {
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer.map_or(subject, |(c, _)| c.subject_name()))?;
    b.set_pubkey(key)?;
    let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(825)?);
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
    } else {
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())?;
    Ok(b.build())
}

/// Creates a development chain for `pass_type_id` and `team_id`.
pub fn dev_chain(pass_type_id: &str, team_id: &str) -> Result<DevChain, CertError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e| CertError::Crypto(what.clone(), e)
    };
    let key = || {
        Rsa::generate(2048)
            .and_then(PKey::from_rsa)
            .map_err(err("generating a key"))
    };
    let (root_key, wwdr_key, pass_key) = (key()?, key()?, key()?);
    let root = issue(
        &name("passpulse development root", &[]).map_err(err("root name"))?,
        &root_key,
        None,
        true,
    )
    .map_err(err("root certificate"))?;
    let wwdr = issue(
        &name("passpulse development WWDR intermediate", &[]).map_err(err("WWDR name"))?,
        &wwdr_key,
        Some((&root, &root_key)),
        true,
    )
    .map_err(err("WWDR certificate"))?;
    let pass = issue(
        &name(
            &format!("Pass Type ID: {pass_type_id}"),
            &[("UID", pass_type_id), ("OU", team_id)],
        )
        .map_err(err("pass certificate name"))?,
        &pass_key,
        Some((&wwdr, &wwdr_key)),
        false,
    )
    .map_err(err("pass certificate"))?;
    Ok(DevChain {
        root,
        identity: SigningIdentity {
            cert: pass,
            key: pass_key,
            chain: vec![wwdr],
        },
    })
}

impl DevChain {
    /// Writes `root.pem`, `wwdr.pem`, `pass.pem` and `pass.key` (mode 0600) into `dir`.
    pub fn write_pem(&self, dir: &Path) -> Result<(), CertError> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |e| CertError::Io {
                path: p.clone(),
                source: e,
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let pem = |c: &X509| {
            c.to_pem()
                .map_err(|e| CertError::Crypto("encoding PEM".into(), e))
        };
        for (file, bytes) in [
            ("root.pem", pem(&self.root)?),
            ("wwdr.pem", pem(&self.identity.chain[0])?),
            ("pass.pem", pem(&self.identity.cert)?),
        ] {
            std::fs::write(dir.join(file), bytes).map_err(io(&dir.join(file)))?;
        }
        let key = self
            .identity
            .key
            .private_key_to_pem_pkcs8()
            .map_err(|e| CertError::Crypto("encoding the key".into(), e))?;
        let kp = dir.join("pass.key");
        std::fs::write(&kp, key).map_err(io(&kp))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o600)).map_err(io(&kp))?;
        Ok(())
    }
}
