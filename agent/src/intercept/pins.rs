//! Layout of loopgate's state under bpffs.
//!
//! ```text
//! <pin_dir>/v<LAYOUT>/maps/<MAP>                       maps, reused by every agent start
//! <pin_dir>/v<LAYOUT>/links/<generation>/<cgroup id>_<program>
//! <pin_dir>/v<LAYOUT>/links/<generation>/netns_<program>  the port owner (sk_lookup)
//! ```
//!
//! Each agent start attaches a fresh generation of links, then retires the
//! older ones ("make before break"): at every instant at least one full set
//! of programs is attached, so no connect goes direct during a restart.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use agent_ebpf::LAYOUT_VERSION;
use aya::programs::links::PinnedLink;

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(pin_dir: &Path) -> Self {
        PinLayout {
            root: pin_dir.join(format!("v{LAYOUT_VERSION}")),
        }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Generation numbers of the link sets pinned now, ascending.
    pub fn generations(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        match fs::read_dir(self.links()) {
            Ok(entries) => {
                for entry in entries {
                    if let Some(g) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
                        out.push(g);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        out.sort_unstable();
        Ok(out)
    }

    pub fn generation_dir(&self, generation: u64) -> PathBuf {
        self.links().join(generation.to_string())
    }

    /// Where the link of `program` on `owner` (a cgroup id, or `netns`) is
    /// pinned (bpffs refuses names with a dot).
    pub fn link_path(&self, generation: u64, owner: &str, program: &str) -> PathBuf {
        self.generation_dir(generation).join(format!("{owner}_{program}"))
    }

    /// The state of other layout versions under the same pin directory (an
    /// agent of another version ran here), oldest first.
    pub fn other_versions(pin_dir: &Path) -> io::Result<Vec<PinLayout>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(pin_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let version = name
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|v| v.parse::<u32>().ok());
            if version.is_some_and(|v| v != LAYOUT_VERSION) {
                out.push(PinLayout { root: entry.path() });
            }
        }
        out.sort_by(|a, b| a.root.cmp(&b.root));
        Ok(out)
    }

    /// Pinned link files of one generation.
    pub fn links_of(&self, generation: u64) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.generation_dir(generation))? {
            out.push(entry?.path());
        }
        out.sort();
        Ok(out)
    }

    /// Detaches and unpins every link of `generation`. Returns how many.
    pub fn retire(&self, generation: u64) -> io::Result<usize> {
        let links = self.links_of(generation)?;
        for path in &links {
            unpin_link(path)?;
        }
        fs::remove_dir(self.generation_dir(generation))?;
        Ok(links.len())
    }

    /// Removes everything: links (which detaches the programs) and maps.
    pub fn remove_all(&self) -> io::Result<usize> {
        let mut links = 0;
        for generation in self.generations()? {
            links += self.retire(generation)?;
        }
        for dir in [self.links(), self.maps()] {
            if dir.exists() {
                for entry in fs::read_dir(&dir)? {
                    fs::remove_file(entry?.path())?;
                }
                fs::remove_dir(&dir)?;
            }
        }
        if self.root.exists() {
            fs::remove_dir(&self.root)?;
        }
        Ok(links)
    }
}

/// Unpins a link; the link (and its attachment) goes when its last
/// reference does, which is this one once the agent has dropped its own.
pub fn unpin_link(path: &Path) -> io::Result<()> {
    let link = PinnedLink::from_pin(path).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
    drop(link.unpin()?);
    Ok(())
}
