//! Whether the proxy can write where it must. `check` probes each directory it writes (create a
//! file, write, fsync, rename, remove, fsync the directory) as the user it runs as: at start for
//! every directory (`app`; a failure stops the start with exit 73, `EX_CANTCREAT`), and again
//! from `/readyz` while the cache's writes fail. `Unwritable` is the report: the directory, the
//! step that failed, the user and uid, the owner and mode found, and the fix. `DiskHealth`
//! counts the cache's write failures in a row; after `FAILING_AFTER` the cache counts as
//! unwritable (`/readyz` 503 with the reason, `glance_cache_proxy_cache_writable` 0) until a
//! fill is committed or a probe passes again.
//!
//! The decisions are pure (`advice`: what to tell the operator; `Tally`: when the disk counts
//! as failing); the probe's file calls and the reads of `/proc/self/status`, `/etc/passwd` and
//! `/etc/group` are the only IO. The probe writes as the proxy does (`disk`: directories
//! 0700, files 0600); its file is named `.writable-probe-<pid>`, a name that no cache, queue
//! or grants reader takes for one of its own (`disk::is_storable_id` refuses a leading dot).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::disk;

/// Write failures in a row after which the cache counts as unwritable. One failure can be a
/// single bad file or a race with a deletion; three in a row, with no success between, is
/// the disk or its permissions.
pub const FAILING_AFTER: u32 = 3;

/// The file operation a probe was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateDir,
    Create,
    Write,
    Fsync,
    Rename,
    Remove,
    FsyncDir,
}

impl Step {
    fn doing(self) -> &'static str {
        match self {
            Step::CreateDir => "creating the directory",
            Step::Create => "creating a file in it",
            Step::Write => "writing a file in it",
            Step::Fsync => "fsyncing a file in it",
            Step::Rename => "renaming a file in it",
            Step::Remove => "removing a file from it",
            Step::FsyncDir => "fsyncing the directory",
        }
    }
}

/// Who the proxy runs as (`/proc/self/status`'s effective ids; names from `/etc/passwd`
/// and `/etc/group` where they have them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub name: Option<String>,
    pub group: Option<String>,
}

impl User {
    /// The user this process runs as; uid and gid `u32::MAX` if `/proc` cannot say.
    pub fn current() -> User {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid = status_id(&status, "Uid:").unwrap_or(u32::MAX);
        let gid = status_id(&status, "Gid:").unwrap_or(u32::MAX);
        User {
            uid,
            gid,
            name: name_of(&fs::read_to_string("/etc/passwd").unwrap_or_default(), uid),
            group: name_of(&fs::read_to_string("/etc/group").unwrap_or_default(), gid),
        }
    }

    /// The user's name for commands (`chown`, `install -o`), or the uid.
    fn user_arg(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uid.to_string())
    }

    /// The group's name for commands, or the gid.
    fn group_arg(&self) -> String {
        self.group.clone().unwrap_or_else(|| self.gid.to_string())
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "user {name} (uid {}, gid {})", self.uid, self.gid),
            None => write!(f, "uid {} (gid {})", self.uid, self.gid),
        }
    }
}

/// The effective id of a `/proc/<pid>/status` line (`Uid:\treal\teffective\tsaved\tfs`).
fn status_id(status: &str, key: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().nth(1)?.parse().ok()
}

/// The name of id `id` in a passwd- or group-format file (`name:x:id:...`).
fn name_of(file: &str, id: u32) -> Option<String> {
    file.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let found: u32 = fields.nth(1)?.parse().ok()?;
        (found == id && !name.is_empty()).then(|| name.to_string())
    })
}

/// What a directory on the way was found to be: its path (the directory itself, or its
/// nearest existing ancestor when it could not be created), owner and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Found {
    fn of(path: &Path) -> Option<Found> {
        let meta = fs::metadata(path).ok()?;
        Some(Found {
            path: path.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        })
    }

    /// The directory, or the nearest ancestor that exists.
    fn nearest(path: &Path) -> Option<Found> {
        path.ancestors().find_map(Found::of)
    }
}

/// A directory the proxy cannot write, and what to do about it.
#[derive(Debug)]
pub struct Unwritable {
    /// The directory that failed.
    pub dir: PathBuf,
    pub step: Step,
    pub error: io::Error,
    pub found: Option<Found>,
    pub user: User,
    /// What to do: `advice`'s answer.
    pub fix: String,
}

impl fmt::Display for Unwritable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot write to {} ({}: {}); the proxy runs as {}",
            self.dir.display(),
            self.step.doing(),
            self.error,
            self.user
        )?;
        if let Some(found) = &self.found {
            let what = if found.path == self.dir {
                "it".to_string()
            } else {
                found.path.display().to_string()
            };
            write!(
                f,
                "; {what} is owned by uid {} gid {}, mode {:04o}",
                found.uid, found.gid, found.mode
            )?;
        }
        write!(f, ". Fix: {}", self.fix)
    }
}

impl std::error::Error for Unwritable {}

/// What the operator should do about `error` at `step` in `dir` (under the cache root
/// `root`), given what was found there and who the proxy runs as.
pub fn advice(
    root: &Path,
    step: Step,
    error: &io::Error,
    found: Option<&Found>,
    user: &User,
) -> String {
    const EROFS: i32 = 30;
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let root = root.display();
    match error.raw_os_error() {
        Some(EROFS) => {
            return format!("the file system is read-only: put cache.dir ({root}) on a writable one (with systemd, CacheDirectory= makes /var/cache/glance-cache-proxy writable under ProtectSystem=strict)")
        }
        Some(ENOSPC | EDQUOT) => {
            return format!("the file system of {root} is full: free space, or set cache.dir to another disk (and cache.max_size below its free space)")
        }
        _ => {}
    }
    let (owner, group) = (user.user_arg(), user.group_arg());
    let systemd = "or, under systemd, keep `CacheDirectory=glance-cache-proxy` in the unit (deploy/systemd), which creates the directory and hands it to the service's user at each start";
    match found {
        Some(found) if step == Step::CreateDir && found.uid != user.uid => format!(
            "create it for the proxy's user, as root: `install -d -o {owner} -g {group} -m 0700 {root}`, {systemd}"
        ),
        Some(found) if found.uid != user.uid => {
            format!("give the cache directory to the proxy's user, as root: `chown -R {owner}:{group} {root}`, {systemd}")
        }
        Some(found) if found.mode & 0o300 != 0o300 => format!(
            "let its owner write it: `chmod u+rwx {}`",
            found.path.display()
        ),
        _ => format!("check the file system under {root} (`dmesg`, mount options, ACLs, SELinux or AppArmor labels), or set cache.dir to a directory the proxy's user owns"),
    }
}

/// Probe each of `dirs` (under the cache root `root`), in order, creating a missing one
/// (0700, `disk::create_dir_all`); the first that fails is reported. Disk work: call it in
/// `disk::startup` or `disk::blocking`.
pub fn check(root: &Path, dirs: &[PathBuf]) -> Result<(), Box<Unwritable>> {
    for dir in dirs {
        if let Err((step, error)) = probe(dir) {
            let found = match step {
                Step::CreateDir => Found::nearest(dir),
                _ => Found::of(dir),
            };
            let user = User::current();
            let fix = advice(root, step, &error, found.as_ref(), &user);
            return Err(Box::new(Unwritable {
                dir: dir.clone(),
                step,
                error,
                found,
                user,
                fix,
            }));
        }
    }
    Ok(())
}

/// Create `dir` if missing, then create, write, fsync, rename and remove a file in it and
/// fsync it: what a fill, a queue marker and the grants journal do there.
fn probe(dir: &Path) -> Result<(), (Step, io::Error)> {
    if !dir.is_dir() {
        disk::create_dir_all(dir).map_err(|e| (Step::CreateDir, e))?;
    }
    let name = format!(".writable-probe-{}", std::process::id());
    let (path, renamed) = (dir.join(&name), dir.join(format!("{name}.renamed")));
    // Leftovers of a probe killed midway by an earlier process with this pid.
    let _ = disk::remove_file(&path);
    let _ = disk::remove_file(&renamed);
    let mut file = disk::create_file(&path, true).map_err(|e| (Step::Create, e))?;
    let written = file
        .write_all(b"glance-cache-proxy can write here\n")
        .map_err(|e| (Step::Write, e))
        .and_then(|()| file.sync_all().map_err(|e| (Step::Fsync, e)))
        .and_then(|()| fs::rename(&path, &renamed).map_err(|e| (Step::Rename, e)));
    if let Err(failed) = written {
        let _ = disk::remove_file(&path);
        return Err(failed);
    }
    fs::remove_file(&renamed).map_err(|e| (Step::Remove, e))?;
    disk::sync_dir(dir).map_err(|e| (Step::FsyncDir, e))
}

/// Write failures in a row, and the last one's description: pure bookkeeping.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    in_a_row: u32,
    last: Option<String>,
}

impl Tally {
    pub fn failed(&mut self, what: String) {
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.last = Some(what);
    }

    pub fn succeeded(&mut self) {
        *self = Tally::default();
    }

    /// Why the disk counts as unwritable, or `None` while it does not.
    pub fn failing(&self) -> Option<String> {
        (self.in_a_row >= FAILING_AFTER).then(|| {
            format!(
                "{} cache writes failed in a row, the last: {}",
                self.in_a_row,
                self.last.as_deref().unwrap_or("unknown")
            )
        })
    }
}

/// The cache's write failures in a row (`Tally`) and the directories to probe again.
#[derive(Debug)]
pub struct DiskHealth {
    root: PathBuf,
    dirs: Vec<PathBuf>,
    tally: Mutex<Tally>,
}

impl DiskHealth {
    pub fn new(root: PathBuf, dirs: Vec<PathBuf>) -> DiskHealth {
        DiskHealth {
            root,
            dirs,
            tally: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cache write failed: `what` says where and why (logged already by the caller).
    pub fn failed(&self, what: String) {
        self.lock().failed(what);
    }

    /// A cache write succeeded (a fill committed).
    pub fn succeeded(&self) {
        self.lock().succeeded();
    }

    /// Why the cache counts as unwritable, or `None`.
    pub fn failing(&self) -> Option<String> {
        self.lock().failing()
    }

    /// While failing, probe the directories again (disk work: off the runtime threads): a
    /// pass clears the failures, a failure is the reason, with the fix.
    pub fn recheck(&self) -> Option<String> {
        let failing = self.failing()?;
        match check(&self.root, &self.dirs) {
            Ok(()) => {
                tracing::info!(dir = %self.root.display(), "the cache directories are writable again");
                self.succeeded();
                None
            }
            Err(e) => Some(format!("{failing}; a probe now: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, name: Option<&str>) -> User {
        User {
            uid,
            gid: uid,
            name: name.map(str::to_string),
            group: name.map(str::to_string),
        }
    }

    fn found(path: &str, uid: u32, mode: u32) -> Found {
        Found {
            path: PathBuf::from(path),
            uid,
            gid: uid,
            mode,
        }
    }

    #[test]
    fn advice_names_the_fix() {
        let root = Path::new("/var/cache/glance-cache-proxy");
        let denied = io::Error::from_raw_os_error(13);
        let svc = user(998, Some("glance-cache-proxy"));
        // (step, error, what was found, who runs, what the advice must say)
        let cases: [(Step, io::Error, Option<Found>, &User, &str); 6] = [
            (
                Step::Create,
                io::Error::from_raw_os_error(13),
                Some(found("/var/cache/glance-cache-proxy", 0, 0o755)),
                &svc,
                "`chown -R glance-cache-proxy:glance-cache-proxy /var/cache/glance-cache-proxy`",
            ),
            (
                Step::CreateDir,
                io::Error::from_raw_os_error(13),
                Some(found("/var/cache", 0, 0o755)),
                &svc,
                "`install -d -o glance-cache-proxy -g glance-cache-proxy -m 0700 /var/cache/glance-cache-proxy`",
            ),
            (
                Step::Create,
                io::Error::from_raw_os_error(13),
                Some(found("/var/cache/glance-cache-proxy/tmp", 998, 0o500)),
                &svc,
                "`chmod u+rwx /var/cache/glance-cache-proxy/tmp`",
            ),
            (
                Step::Create,
                io::Error::from_raw_os_error(30),
                Some(found("/var/cache/glance-cache-proxy", 998, 0o700)),
                &svc,
                "read-only",
            ),
            (
                Step::Write,
                io::Error::from_raw_os_error(28),
                Some(found("/var/cache/glance-cache-proxy", 998, 0o700)),
                &svc,
                "is full",
            ),
            (
                Step::Create,
                io::Error::from_raw_os_error(13),
                Some(found("/var/cache/glance-cache-proxy", 0, 0o755)),
                &user(4242, None),
                "`chown -R 4242:4242 /var/cache/glance-cache-proxy`",
            ),
        ];
        for (step, error, found, who, says) in cases {
            let got = advice(root, step, &error, found.as_ref(), who);
            assert!(
                got.contains(says),
                "{step:?} {error}: {got:?} lacks {says:?}"
            );
        }
        let other = advice(
            root,
            Step::Fsync,
            &denied,
            Some(&found("/x", 998, 0o700)),
            &svc,
        );
        assert!(other.contains("check the file system"), "{other}");
        assert!(advice(root, Step::Create, &denied, None, &svc).contains("check the file system"));
    }

    #[test]
    fn the_report_names_directory_user_owner_mode_and_fix() {
        let report = Unwritable {
            dir: PathBuf::from("/var/cache/glance-cache-proxy/images"),
            step: Step::Create,
            error: io::Error::from_raw_os_error(13),
            found: Some(found("/var/cache/glance-cache-proxy/images", 0, 0o755)),
            user: user(998, Some("glance-cache-proxy")),
            fix: "`chown ...`".into(),
        }
        .to_string();
        for part in [
            "cannot write to /var/cache/glance-cache-proxy/images",
            "creating a file in it",
            "user glance-cache-proxy (uid 998, gid 998)",
            "owned by uid 0 gid 0, mode 0755",
            "Fix: `chown ...`",
        ] {
            assert!(report.contains(part), "{report:?} lacks {part:?}");
        }
    }

    #[test]
    fn ids_and_names_from_proc_and_passwd() {
        let status = "Name:\tx\nUid:\t1000\t998\t998\t998\nGid:\t1000\t997\t997\t997\n";
        assert_eq!(status_id(status, "Uid:"), Some(998));
        assert_eq!(status_id(status, "Gid:"), Some(997));
        assert_eq!(status_id("Uid:\t1\n", "Uid:"), None);
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\nbad line\nglance-cache-proxy:x:998:997::/:/usr/sbin/nologin\n";
        assert_eq!(name_of(passwd, 998).as_deref(), Some("glance-cache-proxy"));
        assert_eq!(name_of(passwd, 0).as_deref(), Some("root"));
        assert_eq!(name_of(passwd, 5), None);
        let me = User::current();
        assert_ne!(me.uid, u32::MAX, "/proc/self/status has the ids");
    }

    #[test]
    fn three_failures_in_a_row_and_a_success_clears_them() {
        let mut t = Tally::default();
        for n in 1..FAILING_AFTER {
            t.failed(format!("failure {n}"));
            assert_eq!(t.failing(), None);
        }
        t.failed("Permission denied in /c/tmp".into());
        let why = t.failing().expect("failing");
        assert!(
            why.contains("3 cache writes failed in a row") && why.contains("/c/tmp"),
            "{why}"
        );
        t.succeeded();
        assert_eq!(t.failing(), None);
        t.failed("again".into());
        assert_eq!(t.failing(), None, "counted afresh after a success");
    }

    #[test]
    fn a_probe_leaves_nothing_and_creates_missing_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b");
        check(dir.path(), &[dir.path().to_path_buf(), deep.clone()]).expect("writable");
        assert!(deep.is_dir());
        let mode = fs::metadata(&deep).expect("stat").mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "created 0700 (less the umask): {mode:o}");
        assert_eq!(
            fs::read_dir(&deep).expect("list").count(),
            0,
            "no probe file left"
        );
        assert_eq!(
            fs::read_dir(dir.path()).expect("list").count(),
            1,
            "only a/"
        );
        // A file where a directory must be: creating it fails, and the report says where.
        let file = dir.path().join("file");
        fs::write(&file, b"x").expect("write");
        let err = check(dir.path(), &[file.join("sub")]).expect_err("not a directory");
        assert_eq!(err.step, Step::CreateDir);
        assert_eq!(err.found.as_ref().map(|f| f.path.clone()), Some(file));
    }

    #[test]
    fn disk_health_recheck_clears_a_writable_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let health = DiskHealth::new(dir.path().into(), vec![dir.path().into()]);
        assert_eq!(health.recheck(), None, "nothing to recheck");
        for _ in 0..FAILING_AFTER {
            health.failed("EIO".into());
        }
        assert!(health.failing().is_some());
        assert_eq!(health.recheck(), None, "the directory is writable: cleared");
        assert_eq!(health.failing(), None);
    }
}
