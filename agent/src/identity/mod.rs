//! Caller identity: OIDC tokens (ID tokens and RFC 9068 access tokens)
//! validated against the issuer's published keys, and bound to processes.
//!
//! `config` the `[identity]` tables; `jwt` JWS parsing and header rules;
//! `keys` discovery + JWKS cache; `http` the small fetch client; `claims`
//! claim checks; `cache` validated tokens; `binding` token-to-process rules;
//! `oidc` the validator tying them together.

mod binding;
mod cache;
pub mod claims;
pub mod config;
pub mod error;
mod http;
mod jwt;
pub mod keys;
pub mod oidc;
#[cfg(any(test, feature = "test-issuer"))]
pub mod test_issuer;
#[cfg(test)]
mod tests;

pub use claims::ValidatedToken;
pub use config::{BindingRule, ConfigError, IdentityConfig, OidcConfig};
pub use error::TokenError;
pub use http::FetchError;
pub use keys::KeyFetchError;
pub use oidc::{OidcValidator, ValidatorStats};
