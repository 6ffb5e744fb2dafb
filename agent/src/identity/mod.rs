//! Caller identity: OIDC tokens (ID tokens and RFC 9068 access tokens)
//! validated against the issuer's published keys, and bound to processes.
//!
//! `config` the `[identity]` tables; `jwt` JWS parsing and header rules;
//! `keys` discovery + JWKS cache (fetched with `crate::http`); `claims`
//! claim checks; `cache` validated tokens; `binding` token-to-process rules;
//! `oidc` the validator tying them together; `principal` the one function
//! that turns a caller (its process, and a token if presented) into a principal.

mod binding;
mod cache;
pub mod claims;
pub mod config;
pub mod error;
mod jwt;
pub mod keys;
pub mod oidc;
mod principal;
#[cfg(any(test, feature = "test-issuer"))]
pub mod test_issuer;
#[cfg(test)]
mod tests;

pub use crate::http::FetchError;
pub use claims::ValidatedToken;
pub use config::{BindingRule, ConfigError, IdentityConfig, OidcConfig};
pub use error::TokenError;
pub use keys::KeyFetchError;
pub use oidc::{OidcValidator, ValidatorStats};
pub use principal::{Authenticator, Mode};
