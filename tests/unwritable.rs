//! A cache the proxy cannot write (issue 28): the real binary, run as an unprivileged user
//! (`setpriv` to nobody when the tests run as root, as CI does; as the test's own user
//! otherwise), refuses to start on a directory it cannot write (exit 73 with the directory,
//! the user, the owner and mode found and the fix), and while running turns `/readyz` to 503
//! and `cache_writable` to 0 after repeated write failures, and back once the directory takes
//! writes again.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{get, pattern, FakeGlance, ProxyProcess, BIN};

/// The unprivileged uid and gid the binary runs as when the tests run as root.
const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The program and leading arguments that run the proxy without root's power over files.
fn unprivileged() -> (String, Vec<String>) {
    if running_as_root() {
        let args = [
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            BIN.into(),
        ];
        ("setpriv".into(), args.to_vec())
    } else {
        (BIN.into(), Vec::new())
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Give `path` to the user the proxy runs as (only root can, and only root needs to).
fn give_to_proxy_user(path: &Path) {
    if running_as_root() {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
}

/// A temporary directory the unprivileged proxy can enter (tempdir makes it 0700; the
/// directories above it must let others through, as /tmp does).
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o755);
    if running_as_root() {
        for up in dir.path().ancestors().skip(1) {
            let mode = std::fs::metadata(up).expect("stat").permissions().mode();
            assert!(
                mode & 0o001 != 0,
                "{} (mode {:o}) does not let others through: the proxy runs as nobody here; \
                 set TMPDIR to a directory others may enter",
                up.display(),
                mode & 0o7777
            );
        }
    }
    dir
}

/// Run the binary to its exit (bounded: it must not start serving), returning (status, stderr).
fn start_fails(cache: &Path) -> (Option<i32>, String) {
    let (program, mut args) = unprivileged();
    args.extend(
        [
            "--cache-dir",
            &cache.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--upstream",
            "http://127.0.0.1:9",
        ]
        .map(String::from),
    );
    let mut child = Command::new(program)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn proxy");
    for _ in 0..500 {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "the proxy started on an unwritable cache directory {}",
        cache.display()
    );
}

#[test]
fn an_unwritable_cache_dir_stops_the_start_with_73_naming_dir_user_owner_mode_and_fix() {
    let dir = workdir();
    // Present but not the proxy user's (as a root-built /var/cache/glance-cache-proxy).
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    if !running_as_root() {
        chmod(&cache, 0o555);
    }
    let (code, err) = start_fails(&cache);
    assert_eq!(code, Some(73), "EX_CANTCREAT:\n{err}");
    // As nobody, the names come from /etc/passwd and /etc/group (`nobody:nogroup` on Debian).
    let fix = if running_as_root() {
        format!(
            "`chown -R {}:{} {}`",
            name_or(NOBODY, "/etc/passwd"),
            name_or(NOBODY, "/etc/group"),
            cache.display()
        )
    } else {
        format!("chmod u+rwx {}", cache.display())
    };
    for part in [
        &format!("cannot write to {}", cache.display()),
        "creating a file in it",
        "the proxy runs as",
        "uid ",
        "owned by uid",
        "mode 0",
        &fix,
        "CacheDirectory=",
    ] {
        assert!(err.contains(part), "stderr lacks {part:?}:\n{err}");
    }
    assert!(!err.contains("cache opened"), "{err}");

    // Missing, under a parent the user cannot write: how to create it for the user.
    let parent = dir.path().join("var-cache");
    std::fs::create_dir(&parent).expect("mkdir");
    if !running_as_root() {
        chmod(&parent, 0o555);
    }
    let missing = parent.join("glance-cache-proxy");
    let (code, err) = start_fails(&missing);
    assert_eq!(code, Some(73), "{err}");
    for part in [
        &format!("cannot write to {}", missing.display()),
        "creating the directory",
        &format!("{} is owned by uid", parent.display()),
        &format!("-m 0700 {}", missing.display()),
    ] {
        assert!(err.contains(part), "stderr lacks {part:?}:\n{err}");
    }
    assert!(!missing.exists());

    // A subdirectory the user cannot write, in a root the user owns.
    let owned = dir.path().join("owned");
    std::fs::create_dir_all(owned.join("queue")).expect("mkdir");
    give_to_proxy_user(&owned);
    if !running_as_root() {
        chmod(&owned.join("queue"), 0o555);
    }
    let (code, err) = start_fails(&owned);
    assert_eq!(code, Some(73), "{err}");
    assert!(
        err.contains(&format!(
            "cannot write to {}",
            owned.join("queue").display()
        )),
        "{err}"
    );
    if !running_as_root() {
        chmod(&owned.join("queue"), 0o755);
    }
    // Nothing of the probe is left behind.
    for d in ["", "images", "tmp", "quarantine"] {
        let names = support::files_in(&owned.join(d));
        assert!(
            names.iter().all(|n| !n.starts_with(".writable-probe")),
            "{d}: {names:?}"
        );
    }
}

/// The name of `id` in a passwd- or group-format `file`, or the number.
fn name_or(id: u32, file: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == id.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| id.to_string())
}

/// `/readyz`'s status and body.
async fn readyz(admin: &str) -> (u16, String) {
    let got = get(&format!("{admin}/readyz")).await;
    (
        got.status.as_u16(),
        String::from_utf8_lossy(&got.body).into_owned(),
    )
}

async fn metrics_page(admin: &str) -> String {
    String::from_utf8_lossy(&get(&format!("{admin}/metrics")).await.body).into_owned()
}

#[tokio::test]
async fn write_failures_while_running_fail_readyz_until_the_directory_is_writable_again() {
    let glance = FakeGlance::start().await;
    let images: Vec<_> = (0..5u64)
        .map(|i| (format!("img-{i}"), pattern(300_000, i + 7)))
        .collect();
    for (id, data) in &images {
        glance.add_image(id, data.clone());
    }
    let dir = workdir();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    give_to_proxy_user(&cache);
    let admin_port = support::closed_port().await.port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let (program, mut args) = unprivileged();
    args.extend(
        [
            "--cache-dir",
            &cache.display().to_string(),
            "--upstream",
            &glance.url,
            "--metrics-listen",
            &format!("127.0.0.1:{admin_port}"),
        ]
        .map(String::from),
    );
    let proxy = ProxyProcess::start(&program, &args, dir.path().join("proxy.log")).await;
    support::until_metric(&admin, "glance_cache_proxy_cache_writable ", 1.0).await;
    assert_eq!(readyz(&admin).await.0, 200);

    // The fills' directory stops taking files: each download is served from Glance, uncached.
    chmod(&cache.join("tmp"), 0o555);
    for (n, (id, data)) in images.iter().take(3).enumerate() {
        let got = get(&format!("{}/v2/images/{id}/file", proxy.url)).await;
        assert_eq!(got.status, 200);
        assert!(got.body == *data, "{id}: the whole image, from Glance");
        let (status, body) = readyz(&admin).await;
        if n + 1 < 3 {
            assert_eq!(status, 200, "{n} failures are not yet the disk: {body}");
        } else {
            assert_eq!(status, 503, "{}", proxy.log_text());
            for part in [
                "cache disk not writable",
                "3 cache writes failed in a row",
                "Permission denied",
                &format!("cannot write to {}", cache.join("tmp").display()),
                "Fix:",
            ] {
                assert!(body.contains(part), "/readyz lacks {part:?}:\n{body}");
            }
        }
    }
    let page = metrics_page(&admin).await;
    assert!(
        page.contains("\nglance_cache_proxy_cache_writable 0\n"),
        "{page}"
    );
    assert!(
        page.contains("glance_cache_proxy_fills_total{result=\"io_error\"} 3"),
        "{page}"
    );

    // Writable again: the next /readyz probes the directories and is ready.
    chmod(&cache.join("tmp"), 0o755);
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 200, "{body}");
    let page = metrics_page(&admin).await;
    assert!(
        page.contains("\nglance_cache_proxy_cache_writable 1\n"),
        "{page}"
    );
    // And the cache caches again: a miss, then a hit.
    let (id, data) = &images[3];
    let url = format!("{}/v2/images/{id}/file", proxy.url);
    assert!(get(&url).await.body == *data);
    support::until(|| proxy.logged_cached(id)).await;
    assert!(get(&url).await.body == *data);
    assert_eq!(glance.downloads(id), 1, "the second came from the cache");
}
