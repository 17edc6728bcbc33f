//! The real binary as a child process (`ProxyProcess`, `BIN`): for SIGKILL, signals, failpoints
//! set through the environment and disk-full tests; and `files_in`, to look at what it left
//! on disk.

use std::time::Duration;

use tokio::net::TcpStream;

use super::closed_port;

/// The proxy binary as a child process (for SIGKILL and disk-full tests).
pub struct ProxyProcess {
    pub child: tokio::process::Child,
    pub url: String,
    pub log: std::path::PathBuf,
}

impl ProxyProcess {
    /// Start `program args...` (the binary itself, or a wrapper that execs it) with
    /// `--listen` on a free port appended (and no metrics listener unless `args` has
    /// `--metrics-listen`), and wait until it answers.
    pub async fn start(program: &str, args: &[String], log: std::path::PathBuf) -> ProxyProcess {
        Self::start_with_env(program, args, log, &[]).await
    }

    /// As `start`, with extra environment variables (e.g. `FAILPOINTS`).
    pub async fn start_with_env(
        program: &str,
        args: &[String],
        log: std::path::PathBuf,
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        let port = closed_port().await.port();
        let stderr = std::fs::File::create(&log).expect("log file");
        // No metrics listener unless the caller asks for one.
        let metrics: &[&str] = if args.iter().any(|a| a == "--metrics-listen") {
            &[]
        } else {
            &["--metrics-listen", ""]
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(metrics)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn proxy");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return ProxyProcess { child, url, log };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "proxy did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log says `id` was cached: its entry is in the index. (Its files appear a
    /// moment earlier, when a request still joins the fill and its room is still reserved.)
    pub fn logged_cached(&self, id: &str) -> bool {
        let line = format!(" cached image_id={id} ");
        self.log_text().lines().any(|l| l.contains(&line))
    }

    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_glance-cache-proxy");
/// The names in `dir`, sorted (empty if it cannot be read).
pub fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
