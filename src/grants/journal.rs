//! The grants file, `<cache dir>/grants`: the grants younger than `auth.offline_grace`, so a
//! proxy restarted during a Glance outage still serves the callers Glance had allowed.
//!
//! A text file, rewritten whole (temp file, fsync, rename, fsync of the directory) by the
//! saver at most once a second, so a crash leaves the old or the new file, never a torn one.
//! First line `glance-cache-proxy grants 2`, then the records the grants keep, once each:
//! `record <sha256 of the JSON, hex> <the JSON as Glance sent it, on one line>`, then one
//! grant a line:
//! `grant <caller key, hex> <granted, unix ms> <size> <md5|-> <os_hash_algo|-> <os_hash_value|->
//! <record sha256|-> <image id>`. Only hashes of identities are written, never a token; the
//! file is mode 0600. A line that does not parse (or is not UTF-8, or is longer than 1 MiB) is
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
use crate::auth::CallerKey;
use crate::digest::{Expected, HashAlgo};
use crate::disk::is_storable_id;

/// The file's name in the cache directory.
pub const FILE: &str = "grants";
const HEADER: &str = "glance-cache-proxy grants 2";

pub struct Journal {
    path: PathBuf,
    /// Names this instance's temp file.
    id: uuid::Uuid,
}

impl Journal {
    /// The journal at `path`, and the grants it holds (none if there is no file yet, or it
    /// cannot be read: then it is set aside, with an error logged).
    pub fn open(path: PathBuf) -> (Journal, Vec<(Key, Grant)>) {
        let grants = match File::open(&path).and_then(|f| read(BufReader::new(f), &path)) {
            Ok(grants) => grants,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                let aside = path.with_extension("bad");
                let moved = fs::rename(&path, &aside);
                tracing::error!(path = %path.display(), error = %e, set_aside = moved.is_ok(), "cannot read the remembered grants; starting without them");
                Vec::new()
            }
        };
        let id = uuid::Uuid::new_v4();
        (Journal { path, id }, grants)
    }

    /// Replace the file's grants with these, durably; how many were written.
    pub fn write<'a>(
        &self,
        grants: impl Iterator<Item = (&'a Key, &'a Grant)>,
    ) -> io::Result<usize> {
        let mut text = String::from(HEADER);
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
                    text.push_str(&format!("record {sha} {json}\n"));
                }
            }
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

fn read(mut input: impl BufRead, path: &Path) -> io::Result<Vec<(Key, Grant)>> {
    match next_line(&mut input)? {
        Some(Some(first)) if first == HEADER => {}
        None => return Ok(Vec::new()),
        Some(_) => {
            tracing::warn!(path = %path.display(), "not a grants file this version reads; ignored");
            return Ok(Vec::new());
        }
    }
    let (mut grants, mut records, mut bad) = (Vec::new(), HashMap::new(), 0);
    while let Some(line) = next_line(&mut input)? {
        let Some(text) = line else {
            bad += 1;
            continue;
        };
        let parsed = match text.split_once(' ') {
            Some(("record", rest)) => parse_record(rest).map(|(sha, r)| {
                records.insert(sha, r);
            }),
            Some(("grant", rest)) => parse(rest, &records).map(|g| grants.push(g)),
            _ => None,
        };
        if parsed.is_none() {
            bad += 1;
        }
    }
    if bad > 0 {
        tracing::warn!(path = %path.display(), lines = bad, "unreadable lines in the grants file skipped");
    }
    Ok(grants)
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
        (CallerKey::of(&h), id.to_string())
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
        let (journal, _) = Journal::open(path.clone());
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
        assert_eq!(names, [FILE], "no temp file left");
    }

    #[test]
    fn grants_round_trip_and_hold_no_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        let (journal, none) = Journal::open(path.clone());
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
            text.matches("\nrecord ").count(),
            1,
            "a shared record is written once"
        );
        assert!(
            !text.contains("secret-token"),
            "only hashes on disk: {text}"
        );
        let (_, back) = Journal::open(path.clone());
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
        let text = format!("{HEADER}\n{}\n{good}\n", bad.join("\n"));
        fs::write(&path, text).expect("write");
        let (_, back) = Journal::open(path.clone());
        assert_eq!(back.len(), 1, "only the good line: {back:?}");
        fs::write(&path, format!("something else\n{good}\n")).expect("write");
        assert!(Journal::open(path.clone()).1.is_empty());
        fs::write(&path, b"").expect("write");
        assert!(Journal::open(path.clone()).1.is_empty());
    }

    #[test]
    fn lines_that_are_not_utf8_or_too_long_are_skipped_and_an_unreadable_file_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        let good = good_line(None, Some((HashAlgo::Sha256, "ab".repeat(32))));
        let mut text = format!("{HEADER}\n").into_bytes();
        text.extend_from_slice(b"grant \xff\xfe not utf-8\n");
        text.extend(std::iter::repeat_n(b'x', (MAX_LINE + 10) as usize));
        text.push(b'\n');
        text.extend_from_slice(format!("{good}\n").as_bytes());
        fs::write(&path, text).expect("write");
        let (_, back) = Journal::open(path.clone());
        assert_eq!(back.len(), 1, "the good line survives its bad neighbours");
        // A directory where the file should be: set aside, no grants, no panic.
        fs::remove_file(&path).expect("rm");
        fs::create_dir(&path).expect("mkdir");
        let (_, back) = Journal::open(path.clone());
        assert!(back.is_empty());
        assert!(dir.path().join("grants.bad").is_dir(), "set aside");
    }
}
