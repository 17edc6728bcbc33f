//! Kernel TLS for cache hits over HTTPS. When the kernel offers the `tls` ULP (listed in
//! `/proc/sys/net/ipv4/tcp_available_ulp`; `modprobe tls`), the build has the `ktls` feature and
//! `server.ktls` is "auto", each TLS connection hands its session keys to the kernel after the
//! handshake and is then served like a plain one: hits go out with sendfile and the kernel
//! encrypts them. Otherwise hits are encrypted in user space by rustls. The decision (`decide`,
//! pure) is logged once at start; `Transport` says per connection which path its hits take
//! (the `tls_hits_total{path}` metric and the access log's `tls` field).
//!
//! A connection whose keys cannot be installed is lost (rustls has given its secrets away). If
//! the kernel itself refused (the ULP, the keys, the cipher), kTLS is switched off for every
//! later connection, with an error log; a client's own failure costs only its connection. The
//! handshake and the key hand-over are bounded together by the header timeout.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::KtlsMode;
use crate::outcome::TlsPath;

/// Where the kernel lists the TCP upper-layer protocols it offers.
pub const ULP_LIST: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Whether this build contains the kTLS path (cargo feature `ktls`).
pub const BUILT_IN: bool = cfg!(feature = "ktls");

/// How a client connection carries its bytes, and so how its hits are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP: sendfile.
    Plain,
    /// TLS with the kernel encrypting: sendfile.
    Ktls,
    /// TLS encrypted by rustls: hits are read and encrypted in user space.
    TlsUserspace,
}

impl Transport {
    /// How hits are encrypted (the access log's `tls` field, the `tls_hits_total` label);
    /// `None` for plain HTTP.
    pub fn tls_path(self) -> Option<TlsPath> {
        match self {
            Transport::Plain => None,
            Transport::Ktls => Some(TlsPath::Ktls),
            Transport::TlsUserspace => Some(TlsPath::Userspace),
        }
    }
}

/// Whether a `tcp_available_ulp` listing offers "tls".
pub fn offers_tls(list: &str) -> bool {
    list.split_whitespace().any(|ulp| ulp == "tls")
}

/// Use kTLS (`Ok`) or not, and why not: from the setting, the build and the kernel's ULP
/// listing (`ulps`: the file's text, or why it could not be read).
pub fn decide(mode: KtlsMode, built_in: bool, ulps: Result<String, String>) -> Result<(), String> {
    if mode == KtlsMode::Off {
        return Err("server.ktls is \"off\"".into());
    }
    if !built_in {
        return Err("this build has no kTLS support (cargo feature `ktls`)".into());
    }
    match ulps {
        Err(e) => Err(format!("cannot read {ULP_LIST}: {e}")),
        Ok(list) if !offers_tls(&list) => Err(format!(
            "the kernel offers no \"tls\" ULP ({ULP_LIST}: \"{}\"; `modprobe tls` adds it)",
            list.trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// The listener's kTLS switch: on after a positive `decide`, off after a failed setup.
#[derive(Debug)]
pub struct KernelTls {
    on: AtomicBool,
}

impl KernelTls {
    /// Decide for this machine and log which path hits over TLS take.
    pub fn detect(mode: KtlsMode) -> KernelTls {
        let ulps = std::fs::read_to_string(ULP_LIST).map_err(|e| e.to_string());
        let on = match decide(mode, BUILT_IN, ulps) {
            Ok(()) => {
                tracing::info!("TLS: cache hits use kernel TLS and sendfile");
                true
            }
            Err(why) => {
                tracing::info!(reason = %why, "TLS: cache hits are encrypted in user space");
                false
            }
        };
        KernelTls {
            on: AtomicBool::new(on),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// A connection's kTLS setup failed: later connections use user space.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        if self.on.swap(false, Ordering::Relaxed) {
            tracing::error!(
                error = %error,
                "TLS: kernel TLS setup failed; cache hits are encrypted in user space from now on"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ulp_listing_is_read_word_by_word() {
        assert!(offers_tls("mptcp tls\n"));
        assert!(offers_tls("tls"));
        assert!(!offers_tls("mptcp\n"));
        assert!(!offers_tls("tlsx mptcp"));
        assert!(!offers_tls(""));
    }

    #[test]
    fn ktls_needs_the_setting_the_build_and_the_kernel() {
        let with = || Ok::<_, String>("mptcp tls\n".to_string());
        assert_eq!(decide(KtlsMode::Auto, true, with()), Ok(()));
        let off = decide(KtlsMode::Off, true, with()).expect_err("off");
        assert!(off.contains("server.ktls"), "{off}");
        let build = decide(KtlsMode::Auto, false, with()).expect_err("no feature");
        assert!(build.contains("feature"), "{build}");
        let kernel = decide(KtlsMode::Auto, true, Ok("mptcp\n".into())).expect_err("no ulp");
        assert!(
            kernel.contains("\"mptcp\"") && kernel.contains("modprobe tls"),
            "{kernel}"
        );
        let unreadable = decide(KtlsMode::Auto, true, Err("No such file".into())).expect_err("x");
        assert!(unreadable.contains(ULP_LIST), "{unreadable}");
    }

    #[test]
    fn a_failed_setup_turns_ktls_off_for_good() {
        let k = KernelTls {
            on: AtomicBool::new(true),
        };
        k.failed(&"EOPNOTSUPP");
        assert!(!k.is_on());
        k.failed(&"again"); // logged once
        assert!(!k.is_on());
    }
}
