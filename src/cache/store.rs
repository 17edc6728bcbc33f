//! The cache on disk: layout, durable publish, removal and the startup recovery scan.
//!
//! Layout under `cache.dir`:
//! - `images/<id>`: a committed image, immutable once renamed into place.
//! - `images/<id>.meta`: its record (size, digests, commit time), JSON.
//! - `tmp/`: fills in progress; anything found here at startup is a leftover and is removed.
//! - `quarantine/<id>.<ms>.json`: what was found about an entry that failed re-verification
//!   or changed on disk (its files are deleted; the report stays for the operator).
//!
//! Publish order (`Store::commit`): fsync the data and the meta file, rename the meta, rename
//! the data, fsync `images/`. An entry counts only when both files exist and the data length
//! equals the recorded size, so a crash at any point leaves either the whole entry or nothing
//! that the scan keeps. Recency is the meta file's mtime, set on each hit, so LRU order
//! survives a restart without a write per hit to anything but inode metadata; the data file
//! itself is never touched after commit, so its `Fingerprint` (inode, size, ctime) changes
//! only if something else writes it.
//!
//! Architecture invariant: no disk IO on a runtime worker thread. Every `Store` method that
//! opens, writes, fsyncs, renames, unlinks or sets times runs inside `disk::blocking` (the
//! blocking pool) or in start-up work (`disk::startup`, a thread of its own); every one of
//! them asserts it in debug builds (`disk::assert_off_runtime`), so a test that reaches the
//! disk from a runtime thread fails. What the store creates is private (`disk`: 0700
//! directories, 0600 files).

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::{Expected, HashAlgo};
use crate::disk::{
    assert_off_runtime, create_dir_all, create_file, is_storable_id, remove_file, sync_dir,
    TempFile, META_SUFFIX,
};
use crate::outcome::DiskFault;

const IMAGES: &str = "images";
const TMP: &str = "tmp";
const QUARANTINE: &str = "quarantine";
/// Threads reading entry records at start.
const SCAN_THREADS: usize = 16;

/// Disk errors, grouped by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache disk is full: {0}")]
    NoSpace(io::Error),
    #[error("cache disk error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(28) {
            StoreError::NoSpace(e)
        } else {
            StoreError::Io(e)
        }
    }
}

impl StoreError {
    pub fn fault(&self) -> DiskFault {
        match self {
            StoreError::NoSpace(_) => DiskFault::NoSpace,
            StoreError::Io(_) => DiskFault::Io,
        }
    }
}

/// What is recorded beside each committed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub image_id: String,
    pub size: u64,
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    /// Commit time, unix milliseconds.
    pub committed_ms: u64,
}

impl EntryMeta {
    pub fn new(image_id: &str, expected: &Expected, committed_ms: u64) -> Self {
        EntryMeta {
            image_id: image_id.to_string(),
            size: expected.size,
            checksum: expected.md5.clone(),
            os_hash_algo: expected
                .os_hash
                .as_ref()
                .map(|(a, _)| a.as_str().to_string()),
            os_hash_value: expected.os_hash.as_ref().map(|(_, v)| v.clone()),
            committed_ms,
        }
    }

    /// The digests this entry was verified against.
    pub fn expected(&self) -> Expected {
        Expected {
            size: self.size,
            md5: self.checksum.clone(),
            os_hash: match (&self.os_hash_algo, &self.os_hash_value) {
                (Some(a), Some(v)) => HashAlgo::parse(a).map(|a| (a, v.clone())),
                _ => None,
            },
        }
    }
}

/// What identifies the exact file an entry was committed as: any write to it, a truncation
/// or a replacement changes one of these (ctime cannot be set back from user space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    ctime_ns: i128,
}

impl Fingerprint {
    pub fn of(stat: &fs::Metadata) -> Fingerprint {
        Fingerprint {
            dev: stat.dev(),
            ino: stat.ino(),
            size: stat.len(),
            ctime_ns: i128::from(stat.ctime()) * 1_000_000_000 + i128::from(stat.ctime_nsec()),
        }
    }

    /// Whether the file's inode changed (written, truncated, chmod-ed...) well after the
    /// entry was committed at `committed_ms`: its bytes must be checked again before use.
    pub fn changed_since(&self, committed_ms: u64) -> bool {
        let ctime_ms = self.ctime_ns.div_euclid(1_000_000);
        ctime_ms > i128::from(committed_ms) + COMMIT_SLACK_MS
    }
}

/// How long after its record's commit time a published data file's ctime may be (the two
/// renames and a directory fsync).
const COMMIT_SLACK_MS: i128 = 2_000;

/// An entry found by the startup scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub meta: EntryMeta,
    /// Last access (the later of the meta and data files' mtimes), unix milliseconds.
    pub last_access_ms: u64,
    pub fingerprint: Fingerprint,
    /// The data file changed after its commit (while the proxy was down, or by an older
    /// version that touched data files): not served until the scrubber has checked it.
    pub suspect: bool,
}

/// The result of the startup scan.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: Vec<Recovered>,
    /// Leftovers removed: partial fills and half-published entries.
    pub removed: usize,
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    images: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
}

/// The store's directories under the cache root, for the start-up probe (`writable::check`).
pub fn dirs(root: &Path) -> [PathBuf; 3] {
    [root.join(IMAGES), root.join(TMP), root.join(QUARANTINE)]
}

impl Store {
    /// Open (creating if needed) the cache directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        assert_off_runtime();
        let store = Store {
            images: dir.join(IMAGES),
            tmp: dir.join(TMP),
            quarantine: dir.join(QUARANTINE),
        };
        create_dir_all(&store.images)?;
        create_dir_all(&store.tmp)?;
        create_dir_all(&store.quarantine)?;
        Ok(store)
    }

    pub fn data_path(&self, id: &str) -> PathBuf {
        self.images.join(id)
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.images.join(format!("{id}{META_SUFFIX}"))
    }

    /// Remove leftovers and return the committed entries. Runs once, before serving.
    pub fn scan(&self) -> Result<Scan, StoreError> {
        assert_off_runtime();
        let mut scan = Scan::default();
        for entry in fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            if remove_file(&path).is_ok() {
                scan.removed += 1;
            }
        }
        let mut metas = Vec::new();
        let mut datas = Vec::new();
        for entry in fs::read_dir(&self.images)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(META_SUFFIX) {
                Some(id) => metas.push(id.to_string()),
                None => datas.push(name),
            }
        }
        // Reading thousands of small records from a cold disk is latency-bound: read them
        // on several threads so the device sees a queue, not one request at a time.
        let per = metas.len().div_ceil(SCAN_THREADS).max(1);
        let results: Vec<(String, Option<Recovered>)> = std::thread::scope(|s| {
            let jobs: Vec<_> = metas
                .chunks(per)
                .map(|ids| {
                    s.spawn(move || {
                        ids.iter()
                            .map(|id| (id.clone(), self.read_entry(id)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            jobs.into_iter()
                .flat_map(|j| j.join().unwrap_or_default())
                .collect()
        });
        for (id, found) in results {
            match found {
                Some(found) => scan.entries.push(found),
                None => {
                    let _ = remove_file(&self.meta_path(&id));
                    let _ = remove_file(&self.data_path(&id));
                    scan.removed += 1;
                }
            }
        }
        for name in datas {
            if !metas.contains(&name) && remove_file(&self.images.join(&name)).is_ok() {
                scan.removed += 1;
            }
        }
        if scan.removed > 0 {
            sync_dir(&self.images)?;
        }
        Ok(scan)
    }

    fn read_entry(&self, id: &str) -> Option<Recovered> {
        let text = fs::read(self.meta_path(id)).ok()?;
        let meta: EntryMeta = serde_json::from_slice(&text).ok()?;
        if meta.image_id != id || !is_storable_id(id) {
            return None;
        }
        let stat = fs::metadata(self.data_path(id)).ok()?;
        if !stat.is_file() || stat.len() != meta.size {
            return None;
        }
        // Hits touch the meta file; caches written before that touched the data file.
        let touched = fs::metadata(self.meta_path(id)).and_then(|m| m.modified());
        let last_access_ms = [stat.modified(), touched]
            .into_iter()
            .filter_map(|t| t.ok().map(unix_ms))
            .max()
            .unwrap_or(meta.committed_ms);
        let fingerprint = Fingerprint::of(&stat);
        Some(Recovered {
            suspect: fingerprint.changed_since(meta.committed_ms),
            meta,
            last_access_ms,
            fingerprint,
        })
    }

    /// A new temporary file for a fill of `id`.
    pub fn create_temp(&self, id: &str) -> Result<(TempFile, File), StoreError> {
        assert_off_runtime();
        let path = self
            .tmp
            .join(format!("{id}.{}", uuid::Uuid::new_v4().simple()));
        Ok(TempFile::create(path)?)
    }

    /// Open a committed entry's data file, with its fingerprint now.
    pub fn open_data(&self, id: &str) -> io::Result<(File, Fingerprint)> {
        assert_off_runtime();
        let file = File::open(self.data_path(id))?;
        let stat = file.metadata()?;
        Ok((file, Fingerprint::of(&stat)))
    }

    /// Publish a verified fill of `id` durably (see the module doc for the order); returns
    /// its record (committed once the data is on disk, so the data file's ctime follows
    /// within milliseconds) and the fingerprint of the published data file.
    pub fn commit(
        &self,
        temp: TempFile,
        data: &File,
        id: &str,
        expected: &Expected,
    ) -> Result<(EntryMeta, Fingerprint), StoreError> {
        assert_off_runtime();
        data.sync_all()?;
        let meta = EntryMeta::new(id, expected, unix_ms(SystemTime::now()));
        let meta = &meta;
        let mut meta_temp = temp.path().as_os_str().to_owned();
        meta_temp.push(META_SUFFIX);
        let meta_temp = PathBuf::from(meta_temp);
        let result = (|| -> io::Result<fs::Metadata> {
            let mut f = create_file(&meta_temp, false)?;
            f.write_all(&serde_json::to_vec(meta).map_err(io::Error::other)?)?;
            f.sync_all()?;
            fs::rename(&meta_temp, self.meta_path(&meta.image_id))?;
            fs::rename(temp.path(), self.data_path(&meta.image_id))?;
            // At once after the rename (which sets ctime): the file as it is now served. Any
            // later write changes it; only a write in the microseconds between the rename and
            // this fstat could share its ctime tick.
            let stat = data.metadata()?;
            sync_dir(&self.images)?;
            Ok(stat)
        })();
        match result {
            Ok(_) => temp.keep(),
            Err(_) => drop(remove_file(&meta_temp)),
        }
        result
            .map(|stat| (meta.clone(), Fingerprint::of(&stat)))
            .map_err(StoreError::from)
    }

    /// Open an entry's data file to read the disk itself (`O_DIRECT`: the page cache neither
    /// answers nor keeps what is read); buffered where the filesystem has no direct IO.
    pub fn open_direct(&self, id: &str) -> io::Result<(File, bool)> {
        assert_off_runtime();
        let path = self.data_path(id);
        match OpenOptions::new()
            .read(true)
            .custom_flags(crate::sys::O_DIRECT)
            .open(&path)
        {
            Ok(f) => Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(crate::sys::EINVAL) => {
                Ok((File::open(&path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Take an entry out of service for good: delete its files and leave `report` (JSON) in
    /// `quarantine/` for the operator. Returns the report's path.
    pub fn quarantine(&self, id: &str, report: &serde_json::Value) -> Result<PathBuf, StoreError> {
        assert_off_runtime();
        self.remove(id)?;
        let path = self
            .quarantine
            .join(format!("{id}.{}.json", unix_ms(SystemTime::now())));
        let text = serde_json::to_vec_pretty(report).map_err(io::Error::other)?;
        create_file(&path, true)?.write_all(&text)?;
        Ok(path)
    }

    /// Delete an entry (readers holding the file open keep reading what they opened).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        assert_off_runtime();
        let meta = remove_file(&self.meta_path(id));
        // Between the two removals (a crash here leaves data without a record).
        fail::fail_point!("store::remove");
        let data = remove_file(&self.data_path(id));
        meta.and(data).map_err(StoreError::from)
    }

    /// Record an access: the meta file's mtime is the LRU tick (the data file is left alone,
    /// so its fingerprint holds).
    pub fn touch(&self, id: &str, when: SystemTime) {
        assert_off_runtime();
        if let Ok(f) = File::options().write(true).open(self.meta_path(id)) {
            let _ = f.set_times(FileTimes::new().set_modified(when));
        }
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn meta(id: &str, size: u64) -> EntryMeta {
        EntryMeta {
            image_id: id.into(),
            size,
            checksum: Some("00".into()),
            os_hash_algo: Some("sha512".into()),
            os_hash_value: Some("11".into()),
            committed_ms: 1,
        }
    }

    fn fill(store: &Store, id: &str, bytes: &[u8]) -> (TempFile, File) {
        let (path, mut file) = store.create_temp(id).expect("temp");
        file.write_all(bytes).expect("write");
        (path, file)
    }

    #[test]
    fn commit_scan_touch_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (tmp, file) = fill(&store, "img-1", b"abcd");
        let (_, print) = store
            .commit(tmp, &file, "img-1", &meta("img-1", 4).expected())
            .expect("commit");
        assert_eq!(fs::read(store.data_path("img-1")).expect("data"), b"abcd");

        let when = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        store.touch("img-1", when);
        let scan = store.scan().expect("scan");
        assert_eq!(scan.removed, 0);
        assert_eq!(scan.entries.len(), 1);
        assert_eq!(
            scan.entries[0].meta,
            EntryMeta {
                committed_ms: scan.entries[0].meta.committed_ms,
                ..meta("img-1", 4)
            }
        );
        assert!(!scan.entries[0].suspect);
        assert_eq!(scan.entries[0].last_access_ms, 1_800_000_000_000);
        // A hit's touch leaves the data file as committed.
        assert_eq!(scan.entries[0].fingerprint, print);
        assert_eq!(
            scan.entries[0].meta.expected().os_hash.map(|(a, _)| a),
            Some(HashAlgo::Sha512)
        );

        store.remove("img-1").expect("remove");
        store.remove("img-1").expect("removing twice is fine");
        assert!(store.scan().expect("scan").entries.is_empty());
    }

    #[test]
    fn scan_removes_every_kind_of_leftover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        // A fill interrupted mid-way.
        let _partial = fill(&store, "a", b"part");
        // A crash between the two renames: meta without data.
        fs::write(
            store.meta_path("b"),
            serde_json::to_vec(&meta("b", 3)).expect("json"),
        )
        .expect("meta");
        // Data without meta.
        fs::write(store.data_path("c"), b"xyz").expect("data");
        // Length differs from the record (truncated).
        fs::write(store.data_path("d"), b"xy").expect("data");
        fs::write(
            store.meta_path("d"),
            serde_json::to_vec(&meta("d", 3)).expect("json"),
        )
        .expect("meta");
        // A torn or foreign meta file.
        fs::write(store.data_path("e"), b"xyz").expect("data");
        fs::write(store.meta_path("e"), b"{not json").expect("meta");
        // One good entry survives.
        let (tmp, file) = fill(&store, "ok", b"fine");
        store
            .commit(tmp, &file, "ok", &meta("ok", 4).expected())
            .expect("commit");

        let scan = store.scan().expect("scan");
        let ids: Vec<&str> = scan
            .entries
            .iter()
            .map(|e| e.meta.image_id.as_str())
            .collect();
        assert_eq!(ids, vec!["ok"]);
        assert_eq!(scan.removed, 5);
        let mut left: Vec<String> = fs::read_dir(dir.path().join(IMAGES))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["ok", "ok.meta"]);
        assert_eq!(fs::read_dir(dir.path().join(TMP)).expect("tmp").count(), 0);
    }

    #[test]
    fn any_write_to_a_committed_file_changes_its_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (tmp, file) = fill(&store, "img", b"abcdef");
        let (_, print) = store
            .commit(tmp, &file, "img", &meta("img", 6).expected())
            .expect("commit");
        let stat = || Fingerprint::of(&fs::metadata(store.data_path("img")).expect("stat"));
        assert_eq!(stat(), print);
        // Same length, one byte rewritten in place (what bit rot through the filesystem,
        // or a stray tool, would do).
        std::thread::sleep(Duration::from_millis(20));
        let f = File::options()
            .write(true)
            .open(store.data_path("img"))
            .expect("open");
        std::os::unix::fs::FileExt::write_at(&f, b"X", 2).expect("write");
        assert_ne!(stat(), print);
        // Found so at the next start (the ctime is seconds past the commit).
        let late = Fingerprint {
            ctime_ns: print.ctime_ns + 3_000_000_000,
            ..print
        };
        let committed = (print.ctime_ns / 1_000_000) as u64;
        assert!(late.changed_since(committed));
        assert!(!print.changed_since(committed));
    }

    #[test]
    fn quarantine_deletes_the_entry_and_keeps_a_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (tmp, file) = fill(&store, "img", b"abc");
        store
            .commit(tmp, &file, "img", &meta("img", 3).expected())
            .expect("commit");
        let report = store
            .quarantine("img", &serde_json::json!({"reason": "hash_mismatch"}))
            .expect("quarantine");
        assert!(!store.data_path("img").exists());
        assert!(store.scan().expect("scan").entries.is_empty());
        let text = fs::read_to_string(report).expect("report");
        assert!(text.contains("hash_mismatch"));
        let (direct, _) = {
            let (tmp, file) = fill(&store, "img2", b"xyz");
            store
                .commit(tmp, &file, "img2", &meta("img2", 3).expected())
                .expect("commit");
            store.open_direct("img2").expect("open")
        };
        assert_eq!(direct.metadata().expect("stat").len(), 3);
    }

    #[tokio::test]
    async fn opening_and_scanning_assert_they_are_off_the_runtime() {
        if !cfg!(debug_assertions) {
            return; // the check exists in debug builds only
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let on_runtime = std::panic::catch_unwind(|| Store::open(dir.path()).map(drop));
        assert!(on_runtime.is_err(), "open on a runtime thread");
        let store = crate::disk::startup(|| Store::open(dir.path())).expect("at start-up");
        assert!(std::panic::catch_unwind(|| store.scan().map(drop)).is_err());
        let scanned = crate::disk::blocking(move || store.scan().map(|s| s.removed)).await;
        assert_eq!(scanned.expect("on the pool").expect("scan"), 0);
    }

    #[test]
    fn enospc_is_told_apart() {
        let e = StoreError::from(io::Error::from_raw_os_error(28));
        assert_eq!(e.fault(), DiskFault::NoSpace);
        assert_eq!(
            StoreError::from(io::Error::other("x")).fault(),
            DiskFault::Io
        );
    }
}
