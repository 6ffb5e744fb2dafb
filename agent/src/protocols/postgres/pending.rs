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

use bytes::BytesMut;
use uuid::Uuid;

use crate::{approval::HoldRequest, mask::MaskRule};

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
}
