//! Disk plumbing shared by the cache, the grants journal, the prefetch queue and the cache
//! API: where disk work runs, which names may become files, and how files are written so that
//! a crash leaves the old file or the new one and no other local user can read them.
//!
//! - Where: `blocking` (the blocking pool, waited for), `spawn` (the blocking pool, started at
//!   the call), `startup` (a thread of its own, for start-up work before any listener
//!   accepts). `assert_off_runtime` (debug builds) panics when disk work runs on a thread of
//!   a Tokio runtime anywhere else; only `blocking` and `spawn` mark a thread as allowed, so
//!   nothing on the request path can switch the check off.
//! - Names: `is_storable_id`.
//! - Writes: everything created is private whatever the umask (`create_dir_all` 0700,
//!   `create_file` 0600); `write_durably` (temp file, fsync, rename, fsync of the directory;
//!   the temp file removed if any step fails); `TempFile` (removed unless kept); `sync_dir`;
//!   `remove_file` (a file already gone is no error).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

thread_local! {
    /// Set while this thread runs disk work on purpose: inside `blocking` or `spawn`.
    static OFF_RUNTIME: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Mode of every directory the proxy creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the proxy creates.
pub const FILE_MODE: u32 = 0o600;

/// The suffix the store gives an entry's record (`images/<id>.meta`): no image id ends in it.
pub const META_SUFFIX: &str = ".meta";

/// Run `work` on this thread, marked as one where disk work belongs.
fn marked<T>(work: impl FnOnce() -> T) -> T {
    let before = OFF_RUNTIME.with(|f| f.replace(true));
    let result = work();
    OFF_RUNTIME.with(|f| f.set(before));
    result
}

/// Run disk work on the blocking pool and wait for it. An error only if the work panicked.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    spawn(work)
        .await
        .map_err(|e| io::Error::other(format!("disk task failed: {e}")))
}

/// Start disk work on the blocking pool now (not when first polled): a caller that asks
/// something else meanwhile spawns no task of its own for it. Must be called in a runtime.
pub fn spawn<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(move || marked(work))
}

/// Run start-up disk work (opening the cache, reading the queue and the grants) on a thread
/// of its own and wait for it: no runtime thread does it, whoever calls, and no thread is
/// marked for it, so the check stays on for everything else.
pub fn startup<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(work).join() {
        Ok(done) => done,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Debug builds: panic if disk work runs on a thread of a Tokio runtime outside `blocking`
/// and `spawn`.
pub fn assert_off_runtime() {
    debug_assert!(
        tokio::runtime::Handle::try_current().is_err() || OFF_RUNTIME.with(|f| f.get()),
        "disk IO on a runtime thread: wrap it in disk::blocking"
    );
}

/// Whether an image id can name a file: Glance ids are UUIDs; anything with a path
/// separator, a leading dot, odd characters or the store's record suffix is simply not
/// cached, queued or remembered.
pub fn is_storable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && !id.ends_with(META_SUFFIX)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Create `dir` and its missing parents, each 0700 whatever the umask (an existing directory
/// is left as it is).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    assert_off_runtime();
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Open `path` for reading and writing, created 0600 whatever the umask: a new file only
/// with `new` (else an existing one is truncated).
pub fn create_file(path: &Path, new: bool) -> io::Result<File> {
    assert_off_runtime();
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(FILE_MODE);
    match new {
        true => options.create_new(true),
        false => options.create(true).truncate(true),
    };
    options.open(path)
}

/// Replace `path` durably with what `fill` writes: into `temp` (0600), fsync, rename over
/// `path`, fsync of the directory. A crash leaves the old file or the new one; a failure at
/// any step removes `temp`.
pub fn write_durably(
    path: &Path,
    temp: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    assert_off_runtime();
    let written = (|| {
        let mut file = create_file(temp, false)?;
        fill(&mut file)?;
        file.flush()?;
        file.sync_all()?;
        fs::rename(temp, path)
    })();
    if let Err(e) = written {
        let _ = remove_file(temp);
        return Err(e);
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Make the renames in `dir` durable: fsync the directory itself.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    assert_off_runtime();
    File::open(dir)?.sync_all()
}

/// Remove `path`; a file already gone is no error.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A temporary file that is removed when dropped, unless `keep` took it (published).
/// Removal runs where the guard drops; in a runtime it is sent to the blocking pool (the name
/// is unique, so removing it later cannot touch anything else).
#[derive(Debug)]
pub struct TempFile(Option<PathBuf>);

impl TempFile {
    /// Create `path` (a new file, 0600) and its guard.
    pub fn create(path: PathBuf) -> io::Result<(TempFile, File)> {
        let file = create_file(&path, true)?;
        Ok((TempFile(Some(path)), file))
    }

    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The file is published (renamed away): nothing to remove.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else { return };
        let off_runtime = OFF_RUNTIME.with(|f| f.get());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !off_runtime => drop(handle.spawn_blocking(move || {
                let _ = marked(|| remove_file(&path));
            })),
            _ => drop(remove_file(&path)),
        }
    }
}

/// The error a fault-injection point asks for: `return(enospc)` (ENOSPC, 28 on Linux) or
/// `return` (EIO, 5).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub fn injected(kind: Option<String>) -> io::Error {
    match kind.as_deref() {
        Some("enospc") => io::Error::from_raw_os_error(28),
        _ => io::Error::from_raw_os_error(5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
        std::panic::catch_unwind(f).is_err()
    }

    #[tokio::test]
    async fn disk_work_is_allowed_on_the_pool_and_at_start_up_only() {
        if !cfg!(debug_assertions) {
            return; // the check exists in debug builds only
        }
        assert!(panics(assert_off_runtime), "a runtime thread is refused");
        blocking(assert_off_runtime).await.expect("the pool may");
        spawn(assert_off_runtime).await.expect("the pool may");
        startup(assert_off_runtime);
        assert!(
            panics(assert_off_runtime),
            "start-up work leaves the check on for the calling thread"
        );
        assert!(
            panics(|| drop(create_dir_all(Path::new("/nonexistent/x")))),
            "the helpers check"
        );
    }

    #[test]
    fn storable_ids() {
        for ok in ["0b4f7c5e-1c9a-4a4e-9e8f-2c1d3b5a6f70", "a.b", "a_b-c"] {
            assert!(is_storable_id(ok), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", ".x", "../x", "a/b", "..", "x.meta", "a b", "é", &long] {
            assert!(!is_storable_id(bad), "{bad}");
        }
    }

    #[test]
    fn what_is_created_is_private_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b");
        create_dir_all(&nested).expect("dirs");
        let file = nested.join("f");
        drop(create_file(&file, true).expect("file"));
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("a")), DIR_MODE);
        assert_eq!(mode(&nested), DIR_MODE);
        assert_eq!(mode(&file), FILE_MODE);
        assert!(create_file(&file, true).is_err(), "new means new");
    }

    #[test]
    fn a_durable_write_replaces_the_file_or_leaves_it_and_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, temp) = (dir.path().join("f"), dir.path().join("f.tmp"));
        write_durably(&path, &temp, |f| f.write_all(b"one")).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"one");
        let failed = write_durably(&path, &temp, |f| {
            f.write_all(b"tw")?;
            Err(io::Error::other("disk gone"))
        });
        assert!(failed.is_err());
        assert_eq!(
            fs::read(&path).expect("read"),
            b"one",
            "the old file stands"
        );
        assert!(!temp.exists(), "the temp file is removed");
    }

    #[test]
    fn a_temp_file_goes_unless_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (gone, kept) = (dir.path().join("gone"), dir.path().join("kept"));
        drop(TempFile::create(gone.clone()).expect("temp"));
        TempFile::create(kept.clone()).expect("temp").0.keep();
        assert!(!gone.exists() && kept.exists());
    }
}
