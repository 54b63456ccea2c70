//! Where the IPAM state lives between agent restarts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::State;

/// The state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a valid state; it is left untouched for inspection.
    #[error(
        "{path} is not a valid IPAM state (left in place for inspection; move it away to start empty, which forgets every allocation): {source}"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A test store refused to save.
    #[error("the store refused to save")]
    Refused,
}

/// Loads and saves the IPAM state.
pub trait Store {
    /// The saved state, or an empty one when nothing was saved yet.
    fn load(&self) -> Result<State, StoreError>;
    /// Saves the whole state; when it returns Ok the state survives a crash.
    fn save(&self, state: &State) -> Result<(), StoreError>;
}

/// The state as one JSON file per boot of the kernel, replaced atomically: written to a
/// temporary file in the same directory and renamed over the old one.
///
/// NB: no fsync, on purpose. The allocations describe pods' network namespaces, and those
/// live exactly as long as the running kernel: after a reboot no sandbox of the previous boot
/// exists and the runtime ADDs every pod again. So the file has to survive the agent (a crash
/// or a restart: the rename is atomic and the page cache outlives the process) but not the
/// machine. Naming the file after the kernel's boot ID means a later boot never reads it —
/// a file torn by a power cut included — and the two fsyncs per allocation (~1.4 ms on this
/// class of machine, under the allocator's lock) are not paid. Cilium keeps its endpoint
/// state under /var/run for the same reason. The agent keeps it in /run/ferrite (tmpfs).
pub struct FileStore {
    path: PathBuf,
}

/// The file name of the state written during the boot `boot_id`.
fn file_name(boot_id: &str) -> String {
    format!("ipam-{boot_id}.json")
}

/// Whether `name` is a state file of some boot (this one's or an earlier one's).
fn is_state_file(name: &str) -> bool {
    name.starts_with("ipam-") && name.ends_with(".json")
}

impl FileStore {
    /// A store at `path` (its directory is created on first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The store of the running boot in `dir`; state files of earlier boots there are
    /// removed (their pods are gone).
    pub fn for_this_boot(dir: &Path) -> Result<Self, StoreError> {
        const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
        let boot_id =
            std::fs::read_to_string(BOOT_ID).map_err(Self::io("reading", Path::new(BOOT_ID)))?;
        Self::for_boot(dir, boot_id.trim())
    }

    /// The store of boot `boot_id` in `dir`, removing other boots' state files.
    pub fn for_boot(dir: &Path, boot_id: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(Self::io("creating", dir))?;
        let current = file_name(boot_id);
        let entries = std::fs::read_dir(dir).map_err(Self::io("listing", dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_state_file(name) && name != current {
                let stale = entry.path();
                std::fs::remove_file(&stale).map_err(Self::io("removing", &stale))?;
                tracing::info!(file = %stale.display(), "removed the IPAM state of an earlier boot");
            }
        }
        Ok(Self::new(dir.join(current)))
    }

    /// The file the state is kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<State, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Self::io("reading", &self.path)(e)),
        }
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(Self::io("creating", dir))?;
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec(state).map_err(|source| StoreError::Corrupt {
            path: tmp.clone(),
            source,
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(Self::io("creating", &tmp))?;
        file.write_all(&bytes).map_err(Self::io("writing", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(Self::io("renaming over", &self.path))?;
        Ok(())
    }
}

/// An in-memory store for tests; `failing()` refuses every save.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    fail: AtomicBool,
}

impl MemoryStore {
    /// A store whose saves fail.
    pub fn failing() -> Self {
        Self {
            state: Mutex::default(),
            fail: AtomicBool::new(true),
        }
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<State, StoreError> {
        Ok(self.state.lock().map(|s| s.clone()).unwrap_or_default())
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(StoreError::Refused);
        }
        if let Ok(mut s) = self.state.lock() {
            *s = state.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use super::super::{Allocator, Block, Owner};
    use super::*;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferrite-ipam-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn blocks() -> Vec<Block> {
        vec![Block {
            cidr: "10.244.0.0/24".parse().unwrap(),
            pool: "p".into(),
        }]
    }

    fn owner(i: usize) -> Owner {
        Owner {
            container_id: format!("c{i}"),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn state_survives_a_restart() {
        let dir = tempdir();
        let path = dir.join("ipam.json");
        let ip = {
            let mut a = Allocator::open(blocks(), vec![], FileStore::new(&path)).unwrap();
            a.allocate(&owner(1), Some("default/web-0".into())).unwrap()
        };
        let mut again = Allocator::open(blocks(), vec![], FileStore::new(&path)).unwrap();
        assert_eq!(again.address_of(&owner(1)), Some(ip));
        assert_ne!(
            again.allocate(&owner(2), None).unwrap(),
            ip,
            "a held address is never handed out again"
        );
        assert!(
            !path.with_extension("tmp").exists(),
            "no temporary file is left behind"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_later_boot_starts_empty_and_removes_the_earlier_boots_state() {
        let dir = tempdir();
        let held = {
            let store = FileStore::for_boot(&dir, "boot-a").unwrap();
            let mut a = Allocator::open(blocks(), vec![], store).unwrap();
            a.allocate(&owner(1), None).unwrap()
        };
        // A torn file from a power cut must not matter either.
        std::fs::write(dir.join("ipam-boot-0.json"), b"").unwrap();
        std::fs::write(dir.join("unrelated.json"), b"{}").unwrap();

        let same_boot = FileStore::for_boot(&dir, "boot-a").unwrap();
        let again = Allocator::open(blocks(), vec![], same_boot).unwrap();
        assert_eq!(
            again.address_of(&owner(1)),
            Some(held),
            "the same boot keeps its state"
        );

        let next_boot = FileStore::for_boot(&dir, "boot-b").unwrap();
        let fresh = Allocator::open(blocks(), vec![], next_boot).unwrap();
        assert_eq!(
            fresh.address_of(&owner(1)),
            None,
            "pods of an earlier boot are gone"
        );
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["unrelated.json"], "only other files are left");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_reported_and_kept() {
        let dir = tempdir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ipam.json");
        std::fs::write(&path, b"{truncated").unwrap();
        let err = FileStore::new(&path).load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert!(err.to_string().contains("move it away"));
        assert_eq!(std::fs::read(&path).unwrap(), b"{truncated");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_requests_never_get_the_same_address() {
        let dir = tempdir();
        let allocator = Arc::new(Mutex::new(
            Allocator::open(blocks(), vec![], FileStore::new(dir.join("ipam.json"))).unwrap(),
        ));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let allocator = Arc::clone(&allocator);
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            allocator
                                .lock()
                                .unwrap()
                                .allocate(&owner(t * 100 + i), None)
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: BTreeSet<_> = all.iter().collect();
        assert_eq!(all.len(), 200);
        assert_eq!(distinct.len(), 200);
        let reloaded = FileStore::new(dir.join("ipam.json")).load().unwrap();
        assert_eq!(
            reloaded.allocations.len(),
            200,
            "every allocation was persisted"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
