//! Signing keys of the test issuer: generation, JWK form, PEM/DER of the
//! public key (for the alg-confusion forgery) and JWT signing.

use aws_lc_rs::encoding::{AsBigEndian, AsDer, EcPublicKeyUncompressedBin, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The signature algorithm of an issuer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-256 with SHA-256 (what a kube-apiserver with an EC key uses).
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit (GitHub Actions, most clusters).
    Rs256,
}

impl KeyAlg {
    /// The JOSE name, `ES256` or `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Es256 => "ES256",
            KeyAlg::Rs256 => "RS256",
        }
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            KeyAlg::Es256 => Algorithm::ES256,
            KeyAlg::Rs256 => Algorithm::RS256,
        }
    }
}

/// One asymmetric signing key with its public halves precomputed.
pub struct IssuerKey {
    alg: KeyAlg,
    kid: String,
    encoding: EncodingKey,
    spki_der: Vec<u8>,
    jwk: Value,
}

impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl IssuerKey {
    /// Generates a fresh key whose kid is derived from its public key the way
    /// kube-apiserver does it: base64url(SHA-256(DER SubjectPublicKeyInfo)).
    pub fn generate(alg: KeyAlg) -> Self {
        let (encoding, spki_der, mut jwk) = match alg {
            KeyAlg::Es256 => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("generate a P-256 key");
                let pkcs8 = pair.to_pkcs8v1().expect("P-256 key to PKCS#8");
                let public = pair.public_key();
                let spki: PublicKeyX509Der<'_> = public.as_der().expect("P-256 SPKI DER");
                let point: EcPublicKeyUncompressedBin<'_> =
                    public.as_be_bytes().expect("P-256 uncompressed point");
                let point = point.as_ref();
                assert_eq!(
                    point.len(),
                    65,
                    "uncompressed P-256 point is 0x04 || X || Y"
                );
                let jwk = json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                });
                (
                    EncodingKey::from_ec_der(pkcs8.as_ref()),
                    spki.as_ref().to_vec(),
                    jwk,
                )
            }
            KeyAlg::Rs256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate an RSA key");
                let pkcs8 = pair.as_der().expect("RSA key to PKCS#8");
                // jsonwebtoken's aws-lc backend wants PKCS#1 DER; its PEM loader
                // unwraps PKCS#8, so go through PEM.
                let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
                let encoding =
                    EncodingKey::from_rsa_pem(pem.as_bytes()).expect("load RSA PKCS#8 PEM");
                let public = pair.public_key();
                let spki: PublicKeyX509Der<'_> = public.as_der().expect("RSA SPKI DER");
                let jwk = json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                });
                (encoding, spki.as_ref().to_vec(), jwk)
            }
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki_der);
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        let object = jwk.as_object_mut().expect("JWK is an object");
        object.insert("kid".into(), kid.clone().into());
        object.insert("alg".into(), alg.name().into());
        object.insert("use".into(), "sig".into());
        Self {
            alg,
            kid,
            encoding,
            spki_der,
            jwk,
        }
    }

    /// The key's algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// The key ID published in the JWKS and put in token headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (`kty`, `kid`, `alg`, `use` and the key material).
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The public key as a `PUBLIC KEY` PEM, newline-terminated.
    pub fn public_key_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki_der)
    }

    /// Signs `claims` with header `{"alg", "typ": "JWT", "kid"}` (this key's kid).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(Some(&self.kid), claims)
    }

    /// Signs `claims` with this key but names `kid` (or no kid) in the header.
    pub fn sign_with_kid(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg.jsonwebtoken());
        header.typ = Some("JWT".into());
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .unwrap_or_else(|e| panic!("sign a test token with {}: {e}", self.alg.name()))
    }
}

/// PEM-armours `der` under `label`, 64 characters a line.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, jwk::Jwk};

    fn roundtrip(alg: KeyAlg) {
        let key = IssuerKey::generate(alg);
        let claims = json!({"sub": "s", "exp": 4_000_000_000_i64});
        let token = key.sign(&claims);
        // The published JWK alone verifies the token.
        let jwk: Jwk = serde_json::from_value(key.jwk()).expect("JWK parses");
        let decoding = DecodingKey::from_jwk(&jwk).expect("decoding key from JWK");
        let mut validation = Validation::new(alg.jsonwebtoken());
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation)
            .expect("token verifies with its JWK");
        assert_eq!(data.claims, claims);
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
        // The PEM form verifies it too.
        let pem = key.public_key_pem();
        let decoding = match alg {
            KeyAlg::Es256 => DecodingKey::from_ec_pem(pem.as_bytes()),
            KeyAlg::Rs256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("decoding key from PEM");
        jsonwebtoken::decode::<Value>(&token, &decoding, &validation)
            .expect("token verifies with its PEM");
    }

    #[test]
    fn es256_keys_sign_tokens_their_jwk_verifies() {
        roundtrip(KeyAlg::Es256);
    }

    #[test]
    fn rs256_keys_sign_tokens_their_jwk_verifies() {
        roundtrip(KeyAlg::Rs256);
    }

    #[test]
    fn kids_differ_between_keys() {
        let a = IssuerKey::generate(KeyAlg::Es256);
        let b = IssuerKey::generate(KeyAlg::Es256);
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 43, "base64url of 32 bytes");
    }
}
