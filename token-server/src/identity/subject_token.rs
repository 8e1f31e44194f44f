//! Why a subject token (RFC 8693) was refused.

use super::jwks::JwksError;

/// Why a subject token was refused. Messages are safe to show the client and
/// never include the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubjectTokenError {
    /// Not a compact JWS, or its parts do not decode.
    #[error("subject token is not a well-formed JWT")]
    Malformed,
    /// The header or claims name a member twice, at any depth.
    #[error("subject token names a JSON member twice")]
    DuplicateMember,
    /// The header lists critical extensions (`crit`); none are understood.
    #[error("subject token header has `crit`; no critical extension is supported")]
    CriticalHeader,
    /// `alg` is `none`, symmetric, or otherwise not accepted.
    #[error("subject token algorithm is not accepted; use RS256, ES256, PS256 or EdDSA")]
    Algorithm,
    /// No configured issuer has this `iss`.
    #[error("subject token issuer is not trusted")]
    UnknownIssuer,
    /// The issuer publishes no key with this kid.
    #[error("subject token is signed by a key the issuer does not publish")]
    UnknownKey,
    /// The signature does not verify.
    #[error("subject token signature is invalid")]
    Signature,
    /// `aud` names none of the accepted audiences.
    #[error("subject token audience is not accepted")]
    Audience,
    /// Past `exp`.
    #[error("subject token has expired")]
    Expired,
    /// Before `nbf` (or `iat` in the future).
    #[error("subject token is not valid yet")]
    NotYetValid,
    /// `iat` is older than the issuer's maximum token age.
    #[error("subject token is older than the maximum token age")]
    TooOld,
    /// A claim the issuer kind needs is missing or malformed.
    #[error("subject token lacks a valid `{0}` claim")]
    Claim(&'static str),
    /// A Kubernetes token whose `sub` names another service account than its
    /// `kubernetes.io` claim.
    #[error("subject token `sub` does not match its kubernetes.io namespace and service account")]
    SubjectMismatch,
    /// The issuer's keys could not be fetched.
    #[error("the issuer's keys are unavailable; retry later")]
    Keys(#[from] JwksError),
}

impl SubjectTokenError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SubjectTokenError::Malformed => "malformed",
            SubjectTokenError::Algorithm => "algorithm",
            SubjectTokenError::UnknownIssuer => "unknown_issuer",
            SubjectTokenError::UnknownKey => "unknown_key",
            SubjectTokenError::Signature => "signature",
            SubjectTokenError::Audience => "audience",
            SubjectTokenError::Expired => "expired",
            SubjectTokenError::NotYetValid => "not_yet_valid",
            SubjectTokenError::TooOld => "too_old",
            SubjectTokenError::Claim(_) => "claim",
            SubjectTokenError::SubjectMismatch => "subject_mismatch",
            SubjectTokenError::DuplicateMember => "duplicate_member",
            SubjectTokenError::CriticalHeader => "critical_header",
            SubjectTokenError::Keys(_) => "keys_unavailable",
        }
    }
}
