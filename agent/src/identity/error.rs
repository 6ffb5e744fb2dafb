//! Why a token was refused. Every message is safe to send to the client: it
//! never contains the token or its claims.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("token type is not accepted")]
    UnsupportedType,
    #[error("token signing key is not known to the issuer")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token was issued by another issuer")]
    WrongIssuer,
    #[error("token is not meant for this audience")]
    WrongAudience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is issued in the future")]
    IssuedInFuture,
    #[error("token lacks a valid {0} claim")]
    MissingClaim(&'static str),
    /// No key set was ever fetched (fail closed).
    #[error("identity provider keys are unavailable; try again later")]
    KeysUnavailable,
    #[error("token is not accepted from this process")]
    BindingRefused,
}
