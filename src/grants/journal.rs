//! The grants file, `<cache dir>/grants`: the grants younger than `auth.offline_grace`, so a
//! proxy restarted during a Glance outage still serves the callers Glance had allowed.
//!
//! A text file, rewritten whole (temp file, fsync, rename, fsync of the directory) by the
//! saver at most once a second, so a crash leaves the old or the new file, never a torn one.
//! First line `glance-cache-proxy grants 4 <the secret's fingerprint>`, then the records the
//! grants keep, once each:
//! `<mac> record <sha256 of the JSON, hex> <the JSON as Glance sent it, on one line>`, then one
//! grant a line:
//! `<mac> grant <caller key, hex> <granted, unix ms> <size> <md5|-> <os_hash_algo|->
//! <os_hash_value|-> <record sha256|-> <image id>`. `<mac>` is an HMAC of the rest of the line
//! with the install's secret (`Secret::line_mac`): a line whose MAC does not verify (copied
//! from a journal of another install, or edited) is skipped and counted (`Skipped`, in the
//! read-back log line), never trusted. A version 3 journal (no MACs) is ignored with one
//! warning: grants are a cache of Glance's answers, losing them once on upgrade is safe.
//! Caller keys are HMACs with the install's secret, kept beside
//! the journal in `grants.key` (hex, mode 0600, made on first start): only keys are written,
//! never a token, and without the secret a key tells nothing of who it is (noauth's headers
//! are easy to guess; a bare hash of them is not). A journal whose first line names another
//! secret, or found with no secret (or one that is not private: mode beyond 0600, or not 32
//! bytes of hex), is ignored, never trusted: the proxy starts with no grants and a new
//! secret. The file is mode 0600. A line that does not parse (or is not UTF-8, or is longer than 1 MiB) is
//! skipped and counted in a warning, never trusted in part; a record whose bytes do not match
//! its hash is no record; a file that cannot be read at all is set aside as `grants.bad` and
//! the proxy starts with no grants. Only v2 grants are written (only they serve offline).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Grant, Key};
use crate::auth::{CallerKey, Secret, SECRET_LEN};
use crate::digest::{Expected, HashAlgo};
use crate::disk::is_storable_id;

/// The file's name in the cache directory.
pub const FILE: &str = "grants";
/// The secret's file, beside the journal.
pub const SECRET_FILE: &str = "grants.key";
const HEADER: &str = "glance-cache-proxy grants 4";
/// The header of the format before lines had MACs (issue 29, hostile probe C).
const HEADER_V3: &str = "glance-cache-proxy grants 3";

/// The grants a journal held.
pub type Loaded = Vec<(Key, Grant)>;

/// Lines of the journal read back and skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Not UTF-8, too long, or not a record or a grant.
    pub unreadable: usize,
    /// Their MAC does not verify with the install's secret.
    pub unverified: usize,
}

pub struct Journal {
    path: PathBuf,
    /// The install's secret: each line's MAC.
    secret: Secret,
    /// What reading the journal back skipped (for the read-back log line).
    skipped: Skipped,
    /// Names this instance's temp file.
    id: uuid::Uuid,
    /// The first line: the header and the secret's fingerprint.
    first: String,
}

impl Journal {
    /// The journal at `path`, the secret its keys are HMACs with, and the grants it holds
    /// (none if there is no file yet, if it was keyed with another secret or no secret was
    /// there, or if it cannot be read: then it is set aside, with an error logged). An error
    /// only when no secret can be kept.
    pub fn open(path: PathBuf) -> io::Result<(Journal, Secret, Loaded)> {
        let secret_path = path.with_file_name(SECRET_FILE);
        let (secret, made) = load_or_make_secret(&secret_path)?;
        let first = format!("{HEADER} {}", secret.fingerprint());
        let opened = match made {
            true => File::open(&path).map(|_| {
                tracing::warn!(path = %path.display(), "a grants file without its secret; ignored");
                (Vec::new(), Skipped::default())
            }),
            false => {
                File::open(&path).and_then(|f| read(BufReader::new(f), &path, &first, &secret))
            }
        };
        let (grants, skipped) = match opened {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), Skipped::default()),
            Err(e) => {
                let aside = path.with_extension("bad");
                let moved = fs::rename(&path, &aside);
                tracing::error!(path = %path.display(), error = %e, set_aside = moved.is_ok(), "cannot read the remembered grants; starting without them");
                (Vec::new(), Skipped::default())
            }
        };
        let id = uuid::Uuid::new_v4();
        let journal = Journal {
            path,
            secret: secret.clone(),
            skipped,
            id,
            first,
        };
        Ok((journal, secret, grants))
    }

    /// What reading the journal back skipped.
    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    /// Replace the file's grants with these, durably; how many were written.
    pub fn write<'a>(
        &self,
        grants: impl Iterator<Item = (&'a Key, &'a Grant)>,
    ) -> io::Result<usize> {
        let mut text = self.first.clone();
        text.push('\n');
        let mut lines = String::new();
        let mut records = HashSet::new();
        let mut n = 0;
        for (key, grant) in grants {
            let Some(line) = line(key, grant) else {
                continue;
            };
            if let Some(json) = grant.record.as_ref().and_then(|r| one_line(r)) {
                let sha = sha_hex(json.as_bytes());
                if records.insert(sha.clone()) {
                    let record = format!("record {sha} {json}");
                    let mac = self.secret.line_mac(&record);
                    text.push_str(&format!("{mac} {record}\n"));
                }
            }
            lines.push_str(&self.secret.line_mac(&line));
            lines.push(' ');
            lines.push_str(&line);
            lines.push('\n');
            n += 1;
        }
        text.push_str(&lines);
        // A name of this journal's own: an instance still ending cannot clobber it.
        let temp = self.path.with_extension(format!("tmp.{}", self.id));
        crate::disk::write_durably(&self.path, &temp, |file| {
            fail::fail_point!("grants::write", |kind| Err(crate::disk::injected(kind)));
            file.write_all(text.as_bytes())
        })?;
        Ok(n)
    }
}

/// Remove the file at `path`, if any (no grace: no decision may outlive the setting).
pub fn discard(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "auth.offline_grace is 0: remembered grants deleted");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The longest line read (a record's JSON is a few KiB).
const MAX_LINE: u64 = 1 << 20;

/// The next line, at most `MAX_LINE` bytes; `Some(None)` for one that is too long or not
/// UTF-8 (skipped), `None` at the end.
fn next_line(input: &mut impl BufRead) -> io::Result<Option<Option<String>>> {
    let mut raw = Vec::new();
    let n = input
        .by_ref()
        .take(MAX_LINE + 1)
        .read_until(b'\n', &mut raw)?;
    if n == 0 {
        return Ok(None);
    }
    if raw.last() != Some(&b'\n') && n as u64 > MAX_LINE {
        // Too long: skip to its end.
        let mut rest = Vec::new();
        while input.by_ref().take(MAX_LINE).read_until(b'\n', &mut rest)? > 0 {
            if rest.last() == Some(&b'\n') {
                break;
            }
            rest.clear();
        }
        return Ok(Some(None));
    }
    if raw.last() == Some(&b'\n') {
        raw.pop();
    }
    Ok(Some(String::from_utf8(raw).ok()))
}

/// The secret at `path`, and whether it was made just now (a new secret when there is none,
/// or it is not one: not 32 bytes of hex, or readable beyond its owner).
fn load_or_make_secret(path: &Path) -> io::Result<(Secret, bool)> {
    use std::os::unix::fs::PermissionsExt;
    match fs::read(path) {
        Ok(raw) => {
            let private = fs::metadata(path)?.permissions().mode() & 0o077 == 0;
            let mut bytes = [0u8; SECRET_LEN];
            let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
            if private && hex::decode_to_slice(text, &mut bytes).is_ok() {
                return Ok((Secret::from_bytes(&bytes), false));
            }
            tracing::warn!(path = %path.display(), private, "the grants secret is not one (32 bytes of hex, mode 0600); a new one is made and the grants file ignored");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes = Secret::random_bytes()
        .map_err(|_| io::Error::other("no randomness for the grants secret"))?;
    let temp = path.with_extension(format!("tmp.{}", uuid::Uuid::new_v4()));
    crate::disk::write_durably(path, &temp, |file| {
        file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
    })?;
    Ok((Secret::from_bytes(&bytes), true))
}

/// The grants of a journal whose first line is `header`, each line's MAC verified with
/// `secret`; what was skipped.
fn read(
    mut input: impl BufRead,
    path: &Path,
    header: &str,
    secret: &Secret,
) -> io::Result<(Loaded, Skipped)> {
    let none = || Ok((Vec::new(), Skipped::default()));
    match next_line(&mut input)? {
        Some(Some(first)) if first == header => {}
        Some(Some(first)) if first.starts_with(HEADER) => {
            tracing::warn!(path = %path.display(), "a grants file keyed with another secret; ignored");
            return none();
        }
        Some(Some(first)) if first.starts_with(HEADER_V3) => {
            tracing::warn!(path = %path.display(), "a grants file of the previous format (lines without MACs); ignored: grants are asked of Glance again");
            return none();
        }
        None => return none(),
        Some(_) => {
            tracing::warn!(path = %path.display(), "not a grants file this version reads; ignored");
            return none();
        }
    }
    let (mut grants, mut records) = (Vec::new(), HashMap::new());
    let mut skipped = Skipped::default();
    while let Some(line) = next_line(&mut input)? {
        let Some(line) = line else {
            skipped.unreadable += 1;
            continue;
        };
        let Some((mac, text)) = line.split_once(' ') else {
            skipped.unreadable += 1;
            continue;
        };
        if !secret.verifies_line(text, mac) {
            skipped.unverified += 1;
            continue;
        }
        let parsed = match text.split_once(' ') {
            Some(("record", rest)) => parse_record(rest).map(|(sha, r)| {
                records.insert(sha, r);
            }),
            Some(("grant", rest)) => parse(rest, &records).map(|g| grants.push(g)),
            _ => None,
        };
        if parsed.is_none() {
            skipped.unreadable += 1;
        }
    }
    if skipped != Skipped::default() {
        tracing::warn!(path = %path.display(), unreadable = skipped.unreadable, unverified = skipped.unverified, "lines of the grants file skipped");
    }
    Ok((grants, skipped))
}

/// One grant's line; `None` for an id that cannot be written on one line.
fn line(key: &Key, grant: &Grant) -> Option<String> {
    if !is_storable_id(&key.1) || !grant.v2 {
        return None;
    }
    let e = &grant.expected;
    let (algo, value) = match &e.os_hash {
        Some((algo, value)) => (algo.as_str(), value.as_str()),
        None => ("-", "-"),
    };
    let record = grant
        .record
        .as_ref()
        .and_then(|r| one_line(r))
        .map(|json| sha_hex(json.as_bytes()));
    Some(format!(
        "grant {} {} {} {} {} {} {} {}",
        key.0.to_hex(),
        grant.at_ms,
        e.size,
        e.md5.as_deref().unwrap_or("-"),
        algo,
        value,
        record.as_deref().unwrap_or("-"),
        key.1
    ))
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A record's JSON as one line of text, if it is one (Glance's JSON escapes every newline).
fn one_line(json: &Bytes) -> Option<&str> {
    std::str::from_utf8(json)
        .ok()
        .filter(|t| !t.contains(['\n', '\r']) && t.len() as u64 <= MAX_LINE / 2)
}

/// `<sha256> <json>` of a record, checked.
fn parse_record(rest: &str) -> Option<(String, Arc<Bytes>)> {
    let (sha, json) = rest.split_once(' ')?;
    (sha_hex(json.as_bytes()) == sha).then(|| {
        (
            sha.to_string(),
            Arc::new(Bytes::copy_from_slice(json.as_bytes())),
        )
    })
}

fn parse(line: &str, records: &HashMap<String, Arc<Bytes>>) -> Option<(Key, Grant)> {
    let mut f = line.split(' ');
    let caller = CallerKey::from_hex(f.next()?)?;
    let at_ms: u64 = f.next()?.parse().ok()?;
    let size: u64 = f.next()?.parse().ok()?;
    let md5 = digest_field(f.next()?)?;
    let os_hash = match (f.next()?, digest_field(f.next()?)?) {
        ("-", None) => None,
        (algo, Some(value)) => Some((HashAlgo::parse(algo)?, value)),
        _ => return None,
    };
    let record = match f.next()? {
        "-" => None,
        sha => Some(Arc::clone(records.get(sha)?)),
    };
    let id = f.next()?;
    if f.next().is_some() || !is_storable_id(id) {
        return None;
    }
    let grant = Grant {
        at_ms,
        seq: 0,
        expected: Arc::new(Expected { size, md5, os_hash }),
        record,
        record_ms: at_ms,
        v2: true,
        noted_ms: at_ms,
    };
    Some(((caller, id.to_string()), grant))
}

/// `-` is none; anything else must be lower-case hex.
fn digest_field(text: &str) -> Option<Option<String>> {
    match text {
        "-" => Some(None),
        hex if !hex.is_empty()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Some(Some(hex.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn key(token: &'static str, id: &str) -> Key {
        let mut h = HeaderMap::new();
        h.insert("x-auth-token", HeaderValue::from_static(token));
        (
            CallerKey::of(&Secret::from_bytes(&[3; SECRET_LEN]), &h),
            id.to_string(),
        )
    }

    fn grant(at_ms: u64, expected: Expected) -> Grant {
        Grant {
            at_ms,
            seq: 0,
            expected: Arc::new(expected),
            record: None,
            record_ms: at_ms,
            v2: true,
            noted_ms: at_ms,
        }
    }

    /// Issue 26: a write that fails after its temp file exists leaves the old file as it was
    /// and no `grants.tmp.<id>` behind.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_failed_write_removes_its_temp_file() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        let (journal, _, _) = Journal::open(path.clone()).expect("open");
        let one = |size| Expected {
            size,
            md5: Some("ab".repeat(16)),
            os_hash: None,
        };
        let first = [(key("a", "img-1"), grant(1_000, one(1)))];
        journal
            .write(first.iter().map(|(k, g)| (k, g)))
            .expect("write");
        let before = fs::read(&path).expect("read");
        fail::cfg("grants::write", "return(enospc)").expect("failpoint");
        let second = [(key("b", "img-2"), grant(2_000, one(2)))];
        let failed = journal.write(second.iter().map(|(k, g)| (k, g)));
        fail::remove("grants::write");
        scenario.teardown();
        assert_eq!(failed.map_err(|e| e.raw_os_error()).err(), Some(Some(28)));
        assert_eq!(
            fs::read(&path).expect("read"),
            before,
            "the old file stands"
        );
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, [FILE, SECRET_FILE], "no temp file left");
    }

    #[test]
    fn grants_round_trip_and_hold_no_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        let (journal, _, none) = Journal::open(path.clone()).expect("open");
        assert!(none.is_empty());
        let both = Expected {
            size: 10,
            md5: Some("ab".repeat(16)),
            os_hash: Some((HashAlgo::Sha512, "cd".repeat(64))),
        };
        let md5_only = Expected {
            size: 3,
            md5: Some("ef".repeat(16)),
            os_hash: None,
        };
        let json = Arc::new(Bytes::from_static(
            b"{\"id\": \"img-1\", \"name\": \"a b\\n\"}",
        ));
        let with_record = Grant {
            record: Some(Arc::clone(&json)),
            ..grant(1_000, both.clone())
        };
        let grants = vec![
            (key("secret-token", "img-1"), with_record.clone()),
            (
                key("someone", "img-1"),
                Grant {
                    at_ms: 1_500,
                    noted_ms: 1_500,
                    record_ms: 1_500,
                    ..with_record
                },
            ),
            (key("other", "img-2"), grant(2_000, md5_only)),
        ];
        let n = journal
            .write(grants.iter().map(|(k, g)| (k, g)))
            .expect("write");
        assert_eq!(n, 3);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(
            text.lines()
                .filter(|l| l.split(' ').nth(1) == Some("record"))
                .count(),
            1,
            "a shared record is written once"
        );
        assert!(
            !text.contains("secret-token"),
            "only hashes on disk: {text}"
        );
        let (_, _, back) = Journal::open(path.clone()).expect("open");
        assert_eq!(back, grants);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// The journal line of a v2 grant of `t` for `img` (size 1) with these digests.
    fn good_line(md5: Option<String>, os_hash: Option<(HashAlgo, String)>) -> String {
        let expected = Expected {
            size: 1,
            md5,
            os_hash,
        };
        line(&key("t", "img"), &grant(5, expected)).expect("line")
    }

    /// `line` with its MAC, as `Journal::write` writes it.
    fn signed(journal: &Journal, line: &str) -> String {
        format!("{} {line}", journal.secret.line_mac(line))
    }

    /// Issue 29, hostile probe C: each line carries an HMAC with the install's secret; a line
    /// copied from another install's journal, or edited, is skipped and counted, never trusted;
    /// a journal of the previous format (no MACs) is ignored.
    #[test]
    fn a_copied_or_edited_line_is_not_trusted() {
        let (ours, theirs) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (path, their_path) = (ours.path().join(FILE), theirs.path().join(FILE));
        let one = |size| Expected {
            size,
            md5: Some("ab".repeat(16)),
            os_hash: None,
        };
        let mine = [(key("t", "img-1"), grant(1_000, one(1)))];
        let (journal, _, _) = Journal::open(path.clone()).expect("open");
        journal
            .write(mine.iter().map(|(k, g)| (k, g)))
            .expect("write");
        let foreign = [(key("t", "img-2"), grant(2_000, one(2)))];
        let (their_journal, _, _) = Journal::open(their_path.clone()).expect("open");
        their_journal
            .write(foreign.iter().map(|(k, g)| (k, g)))
            .expect("write");
        let text = fs::read_to_string(&path).expect("read");
        let their_text = fs::read_to_string(&their_path).expect("read");
        let copied = their_text.lines().nth(1).expect("their grant line");
        assert!(copied.ends_with(" img-2"), "{copied}");
        fs::write(&path, format!("{text}{copied}\n")).expect("write");
        let (journal, _, back) = Journal::open(path.clone()).expect("open");
        assert_eq!(back, mine, "the copied line is not trusted");
        assert_eq!(journal.skipped().unverified, 1);
        // Edited: an older grant made younger.
        let edited = text.replacen(" 1000 ", " 9000 ", 1);
        assert_ne!(edited, text);
        fs::write(&path, &edited).expect("write");
        let (journal, _, back) = Journal::open(path.clone()).expect("open");
        assert!(back.is_empty(), "the edited line is not trusted");
        assert_eq!(journal.skipped().unverified, 1);
        // The previous format (version 3: the same lines without MACs): ignored.
        let v3: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| match i {
                0 => l.replacen(HEADER, HEADER_V3, 1),
                _ => l
                    .split_once(' ')
                    .map(|(_, rest)| rest.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        fs::write(&path, v3.join("\n") + "\n").expect("write");
        let (journal, _, back) = Journal::open(path.clone()).expect("open");
        assert!(back.is_empty(), "a version 3 journal is ignored");
        assert_eq!(journal.skipped(), Skipped::default(), "as a whole");
        // Round trip: its own lines are trusted.
        fs::write(&path, &text).expect("write");
        assert_eq!(Journal::open(path).expect("open").2, mine);
    }

    #[test]
    fn bad_lines_are_skipped_and_foreign_files_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        let good = good_line(Some("00".repeat(16)), None);
        let hexkey = key("t", "img").0.to_hex();
        let body = hex::encode(b"{}");
        let bad = [
            "garbage".to_string(),
            format!("{hexkey} 5 1 - - - - img"),
            format!("grant {hexkey} x 1 - - - - img"),
            format!("grant {hexkey} 5 1 - sha512 - - img"),
            format!("grant {hexkey} 5 1 - md4 00 - img"),
            format!("grant {hexkey} 5 1 ZZ - - - img"),
            format!("grant {hexkey} 5 1 - - - - img extra"),
            format!("grant {hexkey} 5 1 - - - - ../etc"),
            format!("grant {hexkey} 5 1 - - - -"),
            format!("record {} {body}", "0".repeat(64)),
            format!("grant {hexkey} 5 1 - - - {} img", "0".repeat(64)),
        ];
        let journal = Journal::open(path.clone()).expect("open").0;
        let bad: Vec<String> = bad.iter().map(|l| signed(&journal, l)).collect();
        let text = format!(
            "{}\n{}\n{}\nno mac at all\n",
            journal.first,
            bad.join("\n"),
            signed(&journal, &good)
        );
        fs::write(&path, text).expect("write");
        let (again, _, back) = Journal::open(path.clone()).expect("open");
        assert_eq!(back.len(), 1, "only the good line: {back:?}");
        assert_eq!(
            again.skipped(),
            Skipped {
                unreadable: bad.len(),
                unverified: 1
            }
        );
        fs::write(&path, format!("something else\n{good}\n")).expect("write");
        assert!(Journal::open(path.clone()).expect("open").2.is_empty());
        fs::write(&path, b"").expect("write");
        assert!(Journal::open(path.clone()).expect("open").2.is_empty());
    }

    #[test]
    fn lines_that_are_not_utf8_or_too_long_are_skipped_and_an_unreadable_file_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        let good = good_line(None, Some((HashAlgo::Sha256, "ab".repeat(32))));
        let journal = Journal::open(path.clone()).expect("open").0;
        let (first, good) = (&journal.first, signed(&journal, &good));
        let mut text = format!("{first}\n").into_bytes();
        text.extend_from_slice(b"grant \xff\xfe not utf-8\n");
        text.extend(std::iter::repeat_n(b'x', (MAX_LINE + 10) as usize));
        text.push(b'\n');
        text.extend_from_slice(format!("{good}\n").as_bytes());
        fs::write(&path, text).expect("write");
        let (_, _, back) = Journal::open(path.clone()).expect("open");
        assert_eq!(back.len(), 1, "the good line survives its bad neighbours");
        // A directory where the file should be: set aside, no grants, no panic.
        fs::remove_file(&path).expect("rm");
        fs::create_dir(&path).expect("mkdir");
        let (_, _, back) = Journal::open(path.clone()).expect("open");
        assert!(back.is_empty());
        assert!(dir.path().join("grants.bad").is_dir(), "set aside");
    }

    /// Issue 29: the journal's keys are HMACs with the secret beside it (0600); a journal
    /// without its secret, with another one, or with one others may read is ignored, and so
    /// is a version 2 journal (bare SHA-256 keys).
    #[test]
    fn a_journal_is_trusted_only_with_its_own_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        let secret_path = dir.path().join(SECRET_FILE);
        let one = || Expected {
            size: 1,
            md5: Some("ab".repeat(16)),
            os_hash: None,
        };
        let grants = [(key("t", "img-1"), grant(1_000, one()))];
        let write = || {
            let (journal, _, _) = Journal::open(path.clone()).expect("open");
            journal
                .write(grants.iter().map(|(k, g)| (k, g)))
                .expect("write");
        };
        write();
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&secret_path), 0o600);
        let secret = fs::read_to_string(&secret_path).expect("secret");
        assert_eq!(secret.trim_end().len(), 2 * SECRET_LEN);
        let journal_text = fs::read_to_string(&path).expect("journal");
        assert!(
            !journal_text.contains(secret.trim_end()),
            "the secret stays in its file"
        );
        let (_, again, back) = Journal::open(path.clone()).expect("open");
        assert_eq!(back.len(), 1, "its own secret: trusted");
        assert_eq!(
            journal_text.lines().next(),
            Some(format!("{HEADER} {}", again.fingerprint()).as_str())
        );

        // No secret: a new one, the journal ignored (and not keyed by the new one).
        fs::remove_file(&secret_path).expect("rm");
        let (_, new, back) = Journal::open(path.clone()).expect("open");
        assert!(back.is_empty(), "no secret, no trust");
        assert_ne!(new.fingerprint(), again.fingerprint());
        assert_eq!(mode(&secret_path), 0o600);

        // Another secret: ignored.
        write();
        fs::write(&secret_path, format!("{}\n", "5a".repeat(SECRET_LEN))).expect("write");
        fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(Journal::open(path.clone()).expect("open").2.is_empty());

        // A secret others may read, or not a secret: replaced, the journal ignored.
        write();
        fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(Journal::open(path.clone()).expect("open").2.is_empty());
        assert_eq!(mode(&secret_path), 0o600);
        write();
        fs::write(&secret_path, "not hex\n").expect("write");
        assert!(Journal::open(path.clone()).expect("open").2.is_empty());

        // A version 2 journal: ignored.
        write();
        let text = fs::read_to_string(&path).expect("read");
        let (_, rest) = text.split_once('\n').expect("lines");
        fs::write(&path, format!("glance-cache-proxy grants 2\n{rest}")).expect("write");
        assert!(Journal::open(path.clone()).expect("open").2.is_empty());
    }
}
