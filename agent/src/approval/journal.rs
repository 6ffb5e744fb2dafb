//! Pending requests on disk: one small file per request, written when it
//! opens and removed when it ends. Files still present at start belong to
//! requests a previous run never finished; they are recorded as cancelled.
//! Best effort by design: a journal failure is logged, never blocks a hold
//! (the `requested` event is already in the audit trail).
use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::registry::Context;

pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating, root-only) the journal directory.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Journal { dir: dir.to_path_buf() })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub(super) fn write(&self, id: &str, context: &Context) {
        let result = serde_json::to_vec(context)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(self.path(id))?;
                f.write_all(&json)?;
                f.sync_data()
            });
        if let Err(e) = result {
            tracing::error!(approval = %id, error = %e, dir = %self.dir.display(), "could not journal an approval request");
        }
    }

    pub fn remove(&self, id: &str) {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(approval = %id, error = %e, "could not remove a journalled approval request"),
        }
    }

    /// Requests left by a previous run. Unreadable files are logged and
    /// left in place for an operator.
    pub(super) fn leftovers(&self) -> Vec<(String, Context)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Context>(&b).map_err(|e| e.to_string()))
            {
                Ok(context) => out.push((id.to_owned(), context)),
                Err(e) => tracing::error!(file = %path.display(), error = %e, "unreadable approval journal entry"),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
