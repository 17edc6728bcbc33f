//! The bounded vocabulary of what happened to a request, a fill or an entry: enums with
//! `as_str`, whose strings are the access log's fields and the metrics' label values (PG's
//! `CachePhase`/`NoCacheReason`). A leaf: the cache, the image path, the prefetcher and metrics
//! all name these, and nothing here names them back. Code decides on the variants, never on
//! the strings.

/// Defines a fieldless label enum with `ALL` (every variant, for metrics that must export a
/// zero series from the start) and `as_str` (the label).
macro_rules! labels {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The label in logs and metrics.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// How an image-data request was answered (access log `cache`, `image_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From a verified entry on disk.
    Hit,
    /// This request started the fill that streams it.
    Miss,
    /// Joined a fill in progress.
    Coalesced,
    /// Passed through to Glance, and why.
    Bypass(BypassReason),
    /// Glance refused the caller (its status went back unchanged).
    Denied,
}

impl Outcome {
    /// Every outcome label (bypass once), for series that exist from the start.
    pub const LABELS: [&'static str; 5] = ["hit", "miss", "coalesced", "bypass", "denied"];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Bypass(_) => "bypass",
            Outcome::Denied => "denied",
        }
    }

    /// The bypass reason's label, else "".
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Bypass(r) => r.as_str(),
            _ => "",
        }
    }

    /// Served from the proxy's cache (bytes counted as `source="cache"`).
    pub fn from_cache(self) -> bool {
        self == Outcome::Hit
    }
}

labels! {
    /// Why an image-data request went to Glance instead of the cache.
    pub enum BypassReason {
        /// `cache.enabled = false`.
        Disabled => "disabled",
        /// A Range the cache cannot answer (not cached), or `If-Range`/`Content-Range`.
        Range => "range",
        /// Glance refused the caller the record: it answers the download itself (a member
        /// without the reader role may download what it cannot read).
        RecordRefused => "record_refused",
        /// The image is not `active`.
        NotActive => "not_active",
        /// The record could not be read.
        BadRecord => "bad_record",
        /// The record has no size yet.
        NoSize => "no_size",
        /// Glance answered the download with something other than the image.
        UpstreamAnswer => "upstream_answer",
        /// The fill this request would have joined failed before it started.
        FillFailed => "fill_failed",
        /// The id cannot name a file.
        BadId => "bad_id",
        /// The record names no digest (and `cache.cache_unverified` is off).
        NoDigest => "no_digest",
        /// A zero-byte image.
        Empty => "empty",
        /// The entry changed on disk while the proxy was down; not served until scrubbed.
        Unverified => "unverified",
        /// Larger than the whole cache.
        TooLarge => "too_large",
        /// Every byte of the cache is in use by fills in progress.
        NoRoom => "no_room",
        /// The disk is full.
        NoSpace => "no_space",
        /// The disk failed.
        IoError => "io_error",
    }
}

impl BypassReason {
    /// A condition of the proxy's disk that may clear by itself (worth a retry), rather than
    /// a property of the image.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            BypassReason::NoRoom | BypassReason::NoSpace | BypassReason::IoError
        )
    }
}

labels! {
    /// What kind of disk failure stopped a write.
    pub enum DiskFault {
        NoSpace => "no_space",
        Io => "io_error",
    }
}

impl From<DiskFault> for BypassReason {
    fn from(f: DiskFault) -> Self {
        match f {
            DiskFault::NoSpace => BypassReason::NoSpace,
            DiskFault::Io => BypassReason::IoError,
        }
    }
}

impl From<DiskFault> for FillResult {
    fn from(f: DiskFault) -> Self {
        match f {
            DiskFault::NoSpace => FillResult::NoSpace,
            DiskFault::Io => FillResult::IoError,
        }
    }
}

labels! {
    /// How bytes failed to be the image (a fill's or the scrubber's verification).
    pub enum MismatchKind {
        Short => "short",
        Long => "long",
        HashMismatch => "hash_mismatch",
    }
}

labels! {
    /// How a fill ended (`fills_total{result}`).
    pub enum FillResult {
        Committed => "committed",
        /// Glance did not answer the download with a usable 200.
        Rejected => "rejected",
        Short => "short",
        Long => "long",
        HashMismatch => "hash_mismatch",
        /// The upstream body broke or stalled.
        Upstream => "upstream",
        /// Every reader left.
        Aborted => "aborted",
        NoSpace => "no_space",
        IoError => "io_error",
    }
}

impl From<MismatchKind> for FillResult {
    fn from(m: MismatchKind) -> Self {
        match m {
            MismatchKind::Short => FillResult::Short,
            MismatchKind::Long => FillResult::Long,
            MismatchKind::HashMismatch => FillResult::HashMismatch,
        }
    }
}

labels! {
    /// Why a committed entry was taken out of service (`cache_quarantined_total{reason}`).
    pub enum QuarantineReason {
        /// Its data file is not the one verified (found on a hit or by the scrubber).
        ChangedOnDisk => "changed_on_disk",
        HashMismatch => "hash_mismatch",
        Short => "short",
        Long => "long",
        /// Reading it failed (the scrubber, or a hit).
        ReadError => "read_error",
    }
}

impl From<MismatchKind> for QuarantineReason {
    fn from(m: MismatchKind) -> Self {
        match m {
            MismatchKind::Short => QuarantineReason::Short,
            MismatchKind::Long => QuarantineReason::Long,
            MismatchKind::HashMismatch => QuarantineReason::HashMismatch,
        }
    }
}

labels! {
    /// Who decided that a caller may have a cached image (`authorization_decisions_total`).
    pub enum Decision {
        /// Glance, asked now.
        Allowed => "allowed",
        /// Glance, asked now: refused.
        Denied => "denied",
        /// Glance's "yes" to this caller within `auth.grant_ttl`; not asked.
        Cached => "cached",
        /// No upstream answered; Glance's "yes" within `auth.offline_grace`.
        Offline => "offline",
    }
}

labels! {
    /// How a hit over HTTPS was encrypted (`tls_hits_total{path}`, access log `tls`).
    pub enum TlsPath {
        /// Kernel TLS: sent with sendfile.
        Ktls => "ktls",
        /// Read and encrypted by rustls.
        Userspace => "userspace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_listed() {
        fn distinct(labels: Vec<&str>) {
            let mut sorted = labels.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), labels.len(), "{labels:?}");
        }
        distinct(BypassReason::ALL.iter().map(|r| r.as_str()).collect());
        distinct(FillResult::ALL.iter().map(|r| r.as_str()).collect());
        distinct(QuarantineReason::ALL.iter().map(|r| r.as_str()).collect());
        assert_eq!(
            Outcome::Bypass(BypassReason::NoRoom).as_str(),
            "bypass",
            "one outcome label for every bypass"
        );
        assert_eq!(Outcome::Bypass(BypassReason::NoRoom).reason(), "no_room");
        assert_eq!(Outcome::Hit.reason(), "");
    }

    #[test]
    fn transient_reasons_are_the_disk_conditions() {
        let transient: Vec<_> = BypassReason::ALL
            .iter()
            .filter(|r| r.is_transient())
            .map(|r| r.as_str())
            .collect();
        assert_eq!(transient, ["no_room", "no_space", "io_error"]);
        assert!(BypassReason::from(DiskFault::NoSpace).is_transient());
    }
}
