//! Messages loopgate itself sends, encoded with pgwire's types.
use bytes::BytesMut;
use pgwire::messages::{
    Message as _,
    response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus},
    startup::{Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey},
};

/// SQLSTATEs loopgate answers with.
pub mod sqlstate {
    /// A statement refused by policy.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// A malformed or unsupported message.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// The backend could not be reached or refused loopgate.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// loopgate cannot record the command.
    pub const SYSTEM_ERROR: &str = "58000";
    /// The caller's token was refused.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// A held statement that was not approved in time (or withdrawn).
    pub const QUERY_CANCELED: &str = "57014";
    /// Informational notices.
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
}

fn encode(m: impl FnOnce(&mut BytesMut) -> pgwire::error::PgWireResult<()>) -> BytesMut {
    let mut buf = BytesMut::new();
    // Encoding our own well-formed values into a growable buffer cannot fail.
    let _ = m(&mut buf);
    buf
}

/// An ErrorResponse (severity ERROR) with a message loopgate wrote.
pub fn error(code: &str, message: &str) -> BytesMut {
    error_with(code, message, None)
}

pub fn error_with(code: &str, message: &str, hint: Option<&str>) -> BytesMut {
    let mut fields = vec![
        (b'S', "ERROR".to_owned()),
        (b'V', "ERROR".to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    if let Some(hint) = hint {
        fields.push((b'H', hint.to_owned()));
    }
    encode(|b| ErrorResponse::new(fields).encode(b))
}

/// The SQLSTATE of a held statement that was not approved: a denial is a
/// refusal, a timeout or withdrawal a cancellation.
pub fn unapproved_code(resolution: &crate::approval::Resolution) -> &'static str {
    match resolution {
        crate::approval::Resolution::Denied { .. } => sqlstate::INSUFFICIENT_PRIVILEGE,
        _ => sqlstate::QUERY_CANCELED,
    }
}

/// The ErrorResponse of a statement the enforcement point did not let run,
/// with the SQLSTATE a client can act on.
pub fn refusal(refusal: &crate::enforce::Refusal) -> BytesMut {
    use crate::enforce::Cause;
    let code = match &refusal.cause {
        Cause::Policy => sqlstate::INSUFFICIENT_PRIVILEGE,
        Cause::AuditUnavailable | Cause::HoldUnavailable => sqlstate::SYSTEM_ERROR,
        Cause::Unapproved(resolution) => unapproved_code(resolution),
    };
    error(code, &refusal.message("statement"))
}

/// A NoticeResponse: psql and libpq print it as it arrives.
pub fn notice(message: &str, hint: &str) -> BytesMut {
    let fields = vec![
        (b'S', "NOTICE".to_owned()),
        (b'V', "NOTICE".to_owned()),
        (b'C', sqlstate::SUCCESSFUL_COMPLETION.to_owned()),
        (b'M', message.to_owned()),
        (b'H', hint.to_owned()),
    ];
    encode(|b| NoticeResponse::new(fields).encode(b))
}

/// A FATAL ErrorResponse: the session ends after it.
pub fn fatal(code: &str, message: &str) -> BytesMut {
    let fields = vec![
        (b'S', "FATAL".to_owned()),
        (b'V', "FATAL".to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    encode(|b| ErrorResponse::new(fields).encode(b))
}

pub fn ready_for_query(status: u8) -> BytesMut {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(|b| ReadyForQuery::new(status).encode(b))
}

pub fn authentication_ok() -> BytesMut {
    encode(|b| Authentication::Ok.encode(b))
}

pub fn authentication_cleartext() -> BytesMut {
    encode(|b| Authentication::CleartextPassword.encode(b))
}

pub fn parameter_status(name: &str, value: &str) -> BytesMut {
    encode(|b| ParameterStatus::new(name.to_owned(), value.to_owned()).encode(b))
}

pub fn backend_key_data(pid: i32, secret: i32) -> BytesMut {
    encode(|b| BackendKeyData::new(pid, SecretKey::I32(secret)).encode(b))
}

/// Tells a client that asked for a newer protocol minor version (or for
/// `_pq_.` options) that this session speaks 3.0 without them.
pub fn negotiate_protocol_version(unsupported: Vec<String>) -> BytesMut {
    encode(|b| NegotiateProtocolVersion::new(0, unsupported).encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let e = error(sqlstate::INSUFFICIENT_PRIVILEGE, "blocked");
        assert_eq!(e[0], b'E');
        let len = i32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len + 1, e.len());
        let body = &e[5..];
        assert!(body.windows(6).any(|w| w == b"C42501"));
        assert_eq!(*body.last().unwrap(), 0);
    }

    #[test]
    fn ready_for_query_carries_status() {
        assert_eq!(&ready_for_query(b'T')[..], b"Z\0\0\0\x05T");
        assert_eq!(&ready_for_query(b'I')[..], b"Z\0\0\0\x05I");
    }
}
