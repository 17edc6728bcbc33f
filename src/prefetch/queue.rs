//! The persistent prefetch queue: one empty marker file per image in `<cache dir>/queue/`,
//! ordered by the marker's mtime (as Glance's cache), created durably before a queue request
//! is answered and removed only once the image is cached or cannot be (gone, not active). A
//! restart or `kill -9` therefore loses nothing: the markers are the queue.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use crate::disk::{self, blocking, is_storable_id};

pub const QUEUE_DIR: &str = "queue";

pub struct Queue {
    dir: PathBuf,
    /// Image ids, oldest first (the order of the markers' mtimes at start, then of arrival).
    ids: Mutex<VecDeque<String>>,
}

impl Queue {
    /// Open (creating if needed) `<cache_dir>/queue` and read the markers left in it.
    /// Start-up work (`disk::startup`).
    pub fn open(cache_dir: &Path) -> io::Result<Queue> {
        let dir = cache_dir.join(QUEUE_DIR);
        disk::create_dir_all(&dir)?;
        let mut found: Vec<(SystemTime, String)> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_storable_id(&name) {
                continue; // not a marker of ours (a crash leaves none half-named)
            }
            let mtime = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((mtime, name));
        }
        found.sort();
        Ok(Queue {
            dir,
            ids: Mutex::new(found.into_iter().map(|(_, id)| id).collect()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `id` durably (the marker and the directory fsynced, on the blocking pool);
    /// `Ok(false)` if it was queued already.
    pub async fn push(&self, id: &str) -> io::Result<bool> {
        if !is_storable_id(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a storable image id",
            ));
        }
        if self.contains(id) {
            return Ok(false);
        }
        let (dir, marker) = (self.dir.clone(), self.dir.join(id));
        blocking(move || -> io::Result<()> {
            disk::create_file(&marker, false)?.sync_all()?;
            disk::sync_dir(&dir)
        })
        .await??;
        let mut ids = self.lock();
        if ids.iter().any(|q| q == id) {
            return Ok(false);
        }
        ids.push_back(id.to_string());
        Ok(true)
    }

    /// Unqueue `id`; whether it was queued.
    pub async fn remove(&self, id: &str) -> bool {
        let had = {
            let mut ids = self.lock();
            let before = ids.len();
            ids.retain(|q| q != id);
            ids.len() != before
        };
        if had {
            self.delete_markers(vec![id.to_string()]).await;
        }
        had
    }

    /// Unqueue everything; returns how many were queued.
    pub async fn clear(&self) -> usize {
        let ids: Vec<String> = self.lock().drain(..).collect();
        let n = ids.len();
        self.delete_markers(ids).await;
        n
    }

    async fn delete_markers(&self, ids: Vec<String>) {
        let dir = self.dir.clone();
        let _ = blocking(move || {
            for id in ids {
                if let Err(e) = fs::remove_file(dir.join(&id)) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(image_id = %id, error = %e, "cannot delete a queue marker");
                    }
                }
            }
        })
        .await;
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().iter().any(|q| q == id)
    }

    /// Queued ids, oldest first.
    pub fn ids(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn markers_survive_reopening_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = disk::startup(|| Queue::open(dir.path())).expect("open");
        assert!(q.push("b").await.expect("push"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(q.push("a").await.expect("push"));
        assert!(
            !q.push("b").await.expect("again"),
            "a second push is a no-op"
        );
        assert_eq!(q.ids(), ["b", "a"]);
        drop(q);
        let q = disk::startup(|| Queue::open(dir.path())).expect("reopen");
        assert_eq!(q.ids(), ["b", "a"], "mtime order, not name order");
        assert!(q.remove("b").await);
        assert!(!q.remove("b").await);
        assert!(!dir.path().join(QUEUE_DIR).join("b").exists());
        assert_eq!(
            disk::startup(|| Queue::open(dir.path()))
                .expect("reopen")
                .ids(),
            ["a"]
        );
        assert_eq!(q.clear().await, 1);
        assert!(q.is_empty());
        assert!(disk::startup(|| Queue::open(dir.path()))
            .expect("reopen")
            .is_empty());
    }

    #[tokio::test]
    async fn unusable_ids_are_refused_and_stray_files_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = disk::startup(|| Queue::open(dir.path())).expect("open");
        assert!(q.push("../escape").await.is_err());
        assert!(q.push("").await.is_err());
        fs::write(dir.path().join(QUEUE_DIR).join(".hidden"), b"").expect("write");
        let q = disk::startup(|| Queue::open(dir.path())).expect("reopen");
        assert!(q.is_empty());
    }
}
