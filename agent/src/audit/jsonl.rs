//! Interim sink: one JSON object per line in `<dir>/events.jsonl`, written
//! and flushed before `append` returns. Replaced by the WAL + Parquet store.
use std::{io::Write as _, path::Path, sync::Mutex};

use super::{AppendFuture, AuditError, AuditSink, Event};

pub struct JsonLines {
    file: Mutex<std::fs::File>,
}

impl JsonLines {
    pub fn open(dir: &Path) -> std::io::Result<JsonLines> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("events.jsonl"))?;
        Ok(JsonLines { file: Mutex::new(file) })
    }
}

impl AuditSink for JsonLines {
    fn append(&self, event: Event) -> AppendFuture<'_> {
        Box::pin(async move {
            let mut line = serde_json::to_vec(&event).map_err(|e| AuditError::Unavailable(e.to_string()))?;
            line.push(b'\n');
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            file.write_all(&line)
                .map_err(|e| AuditError::Unavailable(e.to_string()))
        })
    }

    fn close(&self) -> AppendFuture<'_> {
        Box::pin(async move {
            let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            file.sync_all().map_err(|e| AuditError::Unavailable(e.to_string()))
        })
    }
}
