//! Signing keys for access tokens: loading, generation, the libtrust key ID
//! registries look keys up by, and the published JWKS.
//!
//! Each key is parsed once and held ready to sign, and its JWT header is
//! encoded once, because the header never changes between tokens.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use serde_json::json;

/// A JWS signature algorithm this server signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256; small and fast, the default.
    #[value(name = "ES256")]
    Es256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    #[value(name = "RS256")]
    Rs256,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
        }
    }
}

/// Why a key could not be loaded, generated or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no PKCS#8 `PRIVATE KEY` block.
    #[error(
        "{0}: expected a PKCS#8 \"PRIVATE KEY\" PEM block (convert with `openssl pkcs8 -topk8 -nocrypt`)"
    )]
    NotPkcs8(PathBuf),
    /// The key is neither P-256 ECDSA nor RSA of at least 2048 bits.
    #[error("{0}: unsupported key type; use an ECDSA P-256 or RSA (2048+ bit) key")]
    Unsupported(PathBuf),
    /// The certificate file holds no `CERTIFICATE` block.
    #[error(
        "{0}: expected a CERTIFICATE PEM block (registry 2.x needs certificates, not bare public keys)"
    )]
    NoCertificate(PathBuf),
    /// The certificate could not be parsed.
    #[error("{0}: certificate is not valid X.509")]
    BadCertificate(PathBuf),
    /// The certificate was made for another key.
    #[error("{cert}: certificate does not belong to the key in {key}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The crypto library could not generate or encode a key.
    #[error("key generation failed")]
    Generate(#[source] aws_lc_rs::error::Unspecified),
    /// The self-signed certificate could not be made.
    #[error("creating the key's certificate failed")]
    Certificate(#[source] rcgen::Error),
    /// The crypto library refused to sign.
    #[error("signing failed")]
    Sign,
}

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

/// One parsed signing key and its certificate.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    signer: Signer,
    cert_der: CertificateDer<'static>,
    cert_not_after: SystemTime,
    jwk: serde_json::Value,
    /// `base64url(header) + "."`, ready to prepend to the claims.
    header_prefix: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 key and the self-signed certificate made for it.
    /// With `embed_x5c` the certificate travels in every token header.
    pub fn load(key_path: &Path, cert_path: &Path, embed_x5c: bool) -> Result<Self, KeyError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyError::Io { path, source }
        };
        let key_pem = std::fs::read(key_path).map_err(io(key_path))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(&key_pem)
            .map_err(|_| KeyError::NotPkcs8(key_path.to_owned()))?;
        let cert_pem = std::fs::read(cert_path).map_err(io(cert_path))?;
        let cert = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|_| KeyError::NoCertificate(cert_path.to_owned()))?;
        Self::from_der(key.secret_pkcs8_der(), cert, embed_x5c, key_path, cert_path)
    }

    fn from_der(
        pkcs8: &[u8],
        cert: CertificateDer<'static>,
        embed_x5c: bool,
        key_path: &Path,
        cert_path: &Path,
    ) -> Result<Self, KeyError> {
        let (signer, alg) =
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8) {
                (Signer::Es256(k), Algorithm::Es256)
            } else if let Ok(k) = RsaKeyPair::from_pkcs8(pkcs8) {
                if k.public_modulus_len() < 256 {
                    return Err(KeyError::Unsupported(key_path.to_owned()));
                }
                (Signer::Rs256(k), Algorithm::Rs256)
            } else {
                return Err(KeyError::Unsupported(key_path.to_owned()));
            };

        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|_| KeyError::BadCertificate(cert_path.to_owned()))?;
        let spki = parsed.public_key().raw;
        let jwk = match &signer {
            Signer::Es256(k) => {
                // Uncompressed point: 0x04 || x || y.
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
            }
            Signer::Rs256(k) => {
                let pk = k.public_key();
                json!({"kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(pk.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(pk.exponent().big_endian_without_leading_zero())})
            }
        };
        if !cert_matches_key(&signer, &parsed) {
            return Err(KeyError::Mismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        let kid = libtrust_kid(spki);
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg.as_str());
        jwk["use"] = json!("sig");

        let mut header = json!({"typ": "JWT", "alg": alg.as_str(), "kid": kid});
        if embed_x5c {
            header["x5c"] = json!([STANDARD.encode(&cert)]);
        }
        let header_prefix = format!("{}.", URL_SAFE_NO_PAD.encode(header.to_string()));
        let cert_not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0),
            );
        Ok(SigningKey {
            alg,
            kid,
            signer,
            cert_der: cert,
            cert_not_after,
            jwk,
            header_prefix,
        })
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The libtrust key ID, as registry 2.x computes it for the certificate.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (with `kid`, `alg` and `use`).
    pub fn jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// When the certificate expires; registries reject tokens after that.
    pub fn cert_not_after(&self) -> SystemTime {
        self.cert_not_after
    }

    /// The certificate as PEM, for a registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> String {
        let b64 = STANDARD.encode(&self.cert_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// Signs already-serialized claims and returns the compact JWS.
    pub fn sign_claims(&self, claims_json: &[u8]) -> Result<String, KeyError> {
        let mut token =
            String::with_capacity(self.header_prefix.len() + claims_json.len() * 2 + 360);
        token.push_str(&self.header_prefix);
        URL_SAFE_NO_PAD.encode_string(claims_json, &mut token);
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Es256(k) => k
                .sign(&rng, token.as_bytes())
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
            Signer::Rs256(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, token.as_bytes(), &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                sig
            }
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut token);
        Ok(token)
    }
}

fn cert_matches_key(signer: &Signer, cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    let cert_key = cert.public_key().subject_public_key.data.as_ref();
    match signer {
        Signer::Es256(k) => cert_key == k.public_key().as_ref(),
        Signer::Rs256(k) => cert_key == k.public_key().as_ref(),
    }
}

/// The key ID libtrust (and so registry 2.x) gives a public key: SHA-256 of
/// the DER SubjectPublicKeyInfo, first 30 bytes, base32 without padding, in
/// twelve `:`-joined groups of four.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
    let encoded = base32(&digest.as_ref()[..30]);
    let groups: Vec<&str> = encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    groups.join(":")
}

/// RFC 4648 base32 without padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The keys an instance signs with and publishes. The first signs; all are
/// published so tokens from a previous key stay verifiable during rotation.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<SigningKey>,
}

impl KeySet {
    /// Builds a key set; `keys` must not be empty.
    pub fn new(keys: Vec<SigningKey>) -> Option<Self> {
        if keys.is_empty() {
            None
        } else {
            Some(KeySet { keys })
        }
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// Every published key, signer first.
    pub fn all(&self) -> &[SigningKey] {
        &self.keys
    }

    /// The JWKS document (`{"keys":[...]}`) for every key.
    pub fn jwks(&self) -> Jwks<'_> {
        Jwks {
            keys: self.keys.iter().map(SigningKey::jwk).collect(),
        }
    }

    /// Every certificate as one PEM bundle.
    pub fn cert_bundle(&self) -> String {
        self.keys.iter().map(SigningKey::cert_pem).collect()
    }
}

/// A JSON Web Key Set.
#[derive(Debug, Serialize)]
pub struct Jwks<'a> {
    /// The public keys.
    pub keys: Vec<&'a serde_json::Value>,
}

/// A freshly generated key and certificate, as PEM.
pub struct GeneratedKey {
    /// PKCS#8 private key PEM; keep it secret.
    pub key_pem: String,
    /// Self-signed certificate PEM.
    pub cert_pem: String,
}

/// How long generated signing certificates stay valid. Registries check the
/// dates only for `x5c`, but an expired bundle entry confuses operators.
pub const GENERATED_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Generates a key for `alg` and a self-signed certificate for it.
pub fn generate(
    alg: Algorithm,
    common_name: &str,
    now: SystemTime,
) -> Result<GeneratedKey, KeyError> {
    let pkcs8 = match alg {
        Algorithm::Es256 => {
            let k = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(KeyError::Generate)?;
            k.to_pkcs8v1()
                .map_err(KeyError::Generate)?
                .as_ref()
                .to_vec()
        }
        Algorithm::Rs256 => {
            let k = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(KeyError::Generate)?;
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&k)
                .map_err(KeyError::Generate)?
                .as_ref()
                .to_vec()
        }
    };
    let err = KeyError::Certificate;
    let sig_alg = match alg {
        Algorithm::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::Rs256 => &rcgen::PKCS_RSA_SHA256,
    };
    let pkcs8_der = PrivatePkcs8KeyDer::from(pkcs8);
    let key_pair =
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8_der, sig_alg).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    // Back-date a little so a registry whose clock is behind still accepts it.
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + GENERATED_CERT_VALIDITY).into();
    let cert = params.self_signed(&key_pair).map_err(err)?;
    Ok(GeneratedKey {
        key_pem: key_pair.serialize_pem(),
        cert_pem: cert.pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn kid_has_twelve_groups_of_four() {
        let kid = libtrust_kid(b"anything");
        assert_eq!(kid.len(), 12 * 4 + 11);
        assert!(kid.split(':').all(|g| g.len() == 4));
    }

    fn write_key(dir: &Path, alg: Algorithm) -> (PathBuf, PathBuf) {
        let g = generate(alg, "test", crate::clock::now()).unwrap();
        let (k, c) = (dir.join("k.pem"), dir.join("c.pem"));
        std::fs::write(&k, g.key_pem).unwrap();
        std::fs::write(&c, g.cert_pem).unwrap();
        (k, c)
    }

    /// The kid must equal what the openssl pipeline in the design computes
    /// for the certificate a registry is given.
    #[test]
    fn kid_matches_openssl_pipeline() {
        for alg in [Algorithm::Es256, Algorithm::Rs256] {
            let dir = tempfile::tempdir().unwrap();
            let (k, c) = write_key(dir.path(), alg);
            let key = SigningKey::load(&k, &c, false).unwrap();
            let script = format!(
                "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER \
                 | openssl dgst -sha256 -binary | head -c 30 | base32 -w0 \
                 | sed 's/=*$//; s/\\(....\\)/\\1:/g; s/:$//'",
                c.display()
            );
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .expect("sh and openssl are needed (apt-get install openssl coreutils)");
            assert!(
                out.status.success(),
                "openssl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let expected = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                expected.trim().len(),
                59,
                "openssl produced no kid; is openssl installed?"
            );
            assert_eq!(key.kid(), expected.trim(), "{alg:?}");
        }
    }

    #[test]
    fn signatures_verify_with_jsonwebtoken() {
        for alg in [Algorithm::Es256, Algorithm::Rs256] {
            let dir = tempfile::tempdir().unwrap();
            let (k, c) = write_key(dir.path(), alg);
            let key = SigningKey::load(&k, &c, true).unwrap();
            let token = key
                .sign_claims(br#"{"sub":"x","aud":"svc","exp":99999999999}"#)
                .unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk().clone()).unwrap();
            let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let jalg = match alg {
                Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
                Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            };
            let mut v = jsonwebtoken::Validation::new(jalg);
            v.set_audience(&["svc"]);
            v.set_required_spec_claims(&["exp"]);
            jsonwebtoken::decode::<serde_json::Value>(&token, &dk, &v).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(header.x5c.map(|v| v.len()), Some(1));
            if alg == Algorithm::Es256 {
                let sig = token.rsplit('.').next().unwrap();
                assert_eq!(
                    URL_SAFE_NO_PAD.decode(sig).unwrap().len(),
                    64,
                    "ES256 must be raw r||s"
                );
            }
        }
    }

    #[test]
    fn mismatched_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (k, _) = write_key(dir.path(), Algorithm::Es256);
        let other = generate(Algorithm::Es256, "other", crate::clock::now()).unwrap();
        let c2 = dir.path().join("other.pem");
        std::fs::write(&c2, other.cert_pem).unwrap();
        assert!(matches!(
            SigningKey::load(&k, &c2, false),
            Err(KeyError::Mismatch { .. })
        ));
    }

    #[test]
    fn bare_public_key_is_not_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (k, _) = write_key(dir.path(), Algorithm::Es256);
        let c = dir.path().join("pub.pem");
        std::fs::write(
            &c,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            SigningKey::load(&k, &c, false),
            Err(KeyError::NoCertificate(_))
        ));
    }
}
