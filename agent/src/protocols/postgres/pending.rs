//! What the server side of a session expects next.
//!
//! The client side forwards messages and queues, in the same order, what
//! their answers will be (or a reply loopgate makes itself, such as the
//! error for a refused statement). The server side consumes the queue as
//! answers arrive, so every answer is attributed to its command and every
//! reply of loopgate's reaches the client exactly where the server's own
//! error would have.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64},
    },
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use crate::{approval::HoldRequest, mask::MaskRule, sql::CopyFormat};

/// A statement that was recorded and forwarded; its result is recorded
/// when the server completes it.
#[derive(Debug)]
pub struct Command {
    /// The `command` audit event this result belongs to.
    pub event_id: Uuid,
    pub fingerprint: String,
    /// Mask rules the policy decision added for this statement's results.
    pub mask: Vec<MaskRule>,
    /// For `COPY ... TO`, the columns of its data, by real name.
    pub copy_columns: Vec<super::rows::Column>,
    /// For `COPY ... TO`, the type OID of each of `copy_columns`.
    pub copy_types: Vec<u32>,
    /// For `COPY`, its data format as the statement names it.
    pub copy_format: Option<CopyFormat>,
    /// The portal an Execute runs: its rows are masked by the portal's
    /// description, whenever and however often it was described.
    pub portal: Option<Bytes>,
    /// Where the statement's result columns come from, for masking values
    /// derived from PHI (`None`: unknown, masked as PHI).
    pub lineage: Option<Arc<crate::sql::lineage::Lineage>>,
    pub started: Instant,
    /// A row-threshold hold: past `threshold` rows the results wait for
    /// approval. Cleared once approved.
    pub gate: Option<Box<Gate>>,
}

/// Results may stream up to `threshold` rows; the next one waits until
/// `request` is approved.
#[derive(Debug)]
pub struct Gate {
    pub threshold: u64,
    pub request: HoldRequest,
    pub progress: Arc<GateProgress>,
}

/// Rows sent so far under one threshold, and whether it was approved.
/// Every Execute of one portal shares it, so fetching a result in batches
/// (Execute with a row limit) counts toward one threshold, not one each.
#[derive(Debug, Default)]
pub struct GateProgress {
    /// Rows of earlier, finished batches.
    pub rows: AtomicU64,
    pub approved: AtomicBool,
}

#[derive(Debug)]
pub enum Pending {
    /// A forwarded simple Query: one command per statement, then ReadyForQuery.
    Query(Vec<Command>),
    /// A forwarded Execute: ends with CommandComplete, EmptyQueryResponse,
    /// PortalSuspended or ErrorResponse.
    Execute(Command),
    /// A forwarded Sync: ends with ReadyForQuery.
    Sync,
    /// Bytes loopgate sends the client itself at this point of the stream;
    /// with `ready`, followed by ReadyForQuery with the current transaction
    /// status (the answer to a refused simple Query).
    Reply { bytes: BytesMut, ready: bool },
    /// A forwarded Parse: ends with ParseComplete.
    Parse { statement: Bytes },
    /// A forwarded Bind: ends with BindComplete. `formats` are the result
    /// format codes the client asked for.
    Bind {
        portal: Bytes,
        statement: Bytes,
        formats: Vec<i16>,
    },
    /// A forwarded Describe: ends with RowDescription or NoData (after a
    /// ParameterDescription for a statement). Loopgate's own (`forward`
    /// false) is answered to loopgate only.
    Describe { target: Target, forward: bool },
    /// A forwarded Close: ends with CloseComplete.
    Close(Target),
}

/// A prepared statement or a portal, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Statement(Bytes),
    Portal(Bytes),
}

impl Target {
    /// From a Describe or Close body: `S` or `P`, then the name.
    pub fn parse(body: &[u8]) -> Option<Target> {
        let (&kind, rest) = body.split_first()?;
        let (name, _) = super::frame::cstr(rest)?;
        let name = Bytes::copy_from_slice(name);
        match kind {
            b'S' => Some(Target::Statement(name)),
            b'P' => Some(Target::Portal(name)),
            _ => None,
        }
    }
}
