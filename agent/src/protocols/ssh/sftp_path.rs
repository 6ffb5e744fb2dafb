//! The path an SFTP request names, as the policy sees it: absolute and
//! lexically normal, so `/srv//phi`, `/srv/./phi`, `/tmp/../srv/phi` and
//! `phi` from `/srv` are all `/srv/phi` — a rule on a prefix cannot be
//! walked around by spelling. The server resolves relative paths against
//! the session's working directory, which loopgate asks it for
//! (`REALPATH "."`) before the first request is decided; with none
//! known, a relative path does not resolve and the request is refused.
//!
//! This is the spelling only: where links lead the server says
//! (`sftp_resolver.rs`), and its answer replaces this one. This one is
//! kept for what the server cannot resolve (the request fails there too)
//! and for the paths open handles name.
use std::collections::HashMap;

/// At most this many open handles are remembered; a handle beyond it has
/// no known path and an operation on it is refused.
const MAX_HANDLES: usize = 4096;

/// `path` resolved against `cwd`: `None` when it is relative and no
/// working directory is known.
pub fn resolve(cwd: Option<&str>, path: &str) -> Option<String> {
    let base = if path.starts_with('/') { "" } else { cwd? };
    let mut segments: Vec<&str> = Vec::new();
    for segment in base.split('/').chain(path.split('/')) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

/// What the session's paths resolve against: its working directory and
/// the files its open handles name.
#[derive(Default)]
pub struct Paths {
    pub cwd: Option<String>,
    handles: HashMap<Vec<u8>, String>,
}

impl Paths {
    pub fn resolve(&self, path: &str) -> Option<String> {
        resolve(self.cwd.as_deref(), path)
    }

    /// Remembers that `handle` was opened for `path`.
    pub fn opened(&mut self, handle: Vec<u8>, path: String) {
        if self.handles.len() < MAX_HANDLES || self.handles.contains_key(&handle) {
            self.handles.insert(handle, path);
        }
    }

    pub fn closed(&mut self, handle: &[u8]) {
        self.handles.remove(handle);
    }

    /// The path `handle` was opened for, if loopgate saw it opened.
    pub fn of_handle(&self, handle: &[u8]) -> Option<&str> {
        self.handles.get(handle).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_a_path_resolve_to_one() {
        for spelling in [
            "/srv/phi/a",
            "/srv//phi/a",
            "/srv/./phi/a",
            "//srv/phi/./a/",
            "/tmp/../srv/phi/a",
            "/../../srv/phi/x/../a",
        ] {
            assert_eq!(resolve(None, spelling).as_deref(), Some("/srv/phi/a"), "{spelling}");
        }
        assert_eq!(resolve(Some("/srv"), "phi/a").as_deref(), Some("/srv/phi/a"));
        assert_eq!(resolve(Some("/home/u"), "../../srv/phi").as_deref(), Some("/srv/phi"));
        assert_eq!(resolve(Some("/home/u"), "").as_deref(), Some("/home/u"));
        assert_eq!(resolve(Some("/home/u"), ".").as_deref(), Some("/home/u"));
        assert_eq!(resolve(None, "/").as_deref(), Some("/"));
        assert_eq!(resolve(None, "phi/a"), None);
    }

    #[test]
    fn handles_name_the_path_they_were_opened_for() {
        let mut paths = Paths::default();
        paths.opened(b"h1".to_vec(), "/srv/phi/a".into());
        assert_eq!(paths.of_handle(b"h1"), Some("/srv/phi/a"));
        paths.closed(b"h1");
        assert_eq!(paths.of_handle(b"h1"), None);
        for i in 0..MAX_HANDLES + 10 {
            paths.opened(i.to_string().into_bytes(), "/x".into());
        }
        assert_eq!(paths.handles.len(), MAX_HANDLES);
        assert_eq!(paths.of_handle((MAX_HANDLES + 5).to_string().as_bytes()), None);
    }
}
