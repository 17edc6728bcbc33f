//! The only module with `unsafe` code: safe wrappers over the Linux calls the proxy needs
//! that std does not offer (`sendfile(2)`, `posix_fadvise(2)`, `cachestat(2)`,
//! `fallocate(2)`, glibc's `mallopt(3)`, the `FIONREAD` ioctl).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;

/// The errno of an I/O error from the device (a disk read that failed).
pub const EIO: i32 = libc::EIO;

/// Send up to `count` bytes of `file`, starting at `offset`, to the socket `sock`. Returns the
/// bytes sent (0 only at the end of the file). `WouldBlock` when the socket is full.
pub fn sendfile(
    sock: &impl AsFd,
    file: &impl AsFd,
    offset: u64,
    count: usize,
) -> io::Result<usize> {
    let mut off: libc::off_t = offset
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
    // SAFETY: both descriptors are borrowed, so they stay open for the call; `off` is a valid,
    // exclusively borrowed off_t; the kernel reads the file and writes the socket, not memory
    // of ours.
    let n = unsafe {
        libc::sendfile(
            sock.as_fd().as_raw_fd(),
            file.as_fd().as_raw_fd(),
            &mut off,
            count,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Open flags for reading a file past the page cache (`O_DIRECT`): reads must use
/// block-aligned buffers, offsets and lengths.
pub const O_DIRECT: i32 = libc::O_DIRECT;
/// The errno a filesystem without direct IO answers an `O_DIRECT` open with.
pub const EINVAL: i32 = libc::EINVAL;

/// Tell the kernel `len` bytes of `file` from `offset` will be read sequentially (a larger
/// readahead window). Advice only: errors are ignored by callers.
pub fn advise_sequential(file: &impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    fadvise(file, offset, len, libc::POSIX_FADV_SEQUENTIAL)
}

/// Drop the clean page-cache pages of a range (tests and benchmarks make files cold with it).
pub fn advise_dont_need(file: &impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    fadvise(file, offset, len, libc::POSIX_FADV_DONTNEED)
}

/// Allocate the blocks for the first `len` bytes of `file` without changing its size
/// (`fallocate(2)` with `FALLOC_FL_KEEP_SIZE`): the writes that follow fill allocated blocks
/// instead of reserving delayed allocations page by page (ext4 here: 0.10-0.13 instead of
/// 0.17-0.19 CPU-seconds per GiB written in 256 KiB writes; bench/RESULTS.md, issue 16). An optimisation: callers ignore errors (a
/// filesystem without it answers `EOPNOTSUPP`).
pub fn preallocate(file: &impl AsFd, len: u64) -> io::Result<()> {
    let fd = file.as_fd().as_raw_fd();
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain integer arguments and a borrowed, open descriptor.
    let rc = unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fadvise(file: &impl AsFd, offset: u64, len: u64, advice: libc::c_int) -> io::Result<()> {
    let fd = file.as_fd().as_raw_fd();
    let (off, len) = (offset as libc::off_t, len as libc::off_t);
    // SAFETY: plain integer arguments and a borrowed, open descriptor.
    let rc = unsafe { libc::posix_fadvise(fd, off, len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// `cachestat(2)` (Linux 6.5+); one number on every architecture.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether every page of `len` bytes of `file` from `offset` is in the page cache, so that a
/// `sendfile` of them cannot wait for the disk. `Ok(None)` when the kernel cannot tell
/// (no `cachestat`, before Linux 6.5).
pub fn is_cached(file: &impl AsFd, offset: u64, len: u64) -> io::Result<Option<bool>> {
    if len == 0 {
        return Ok(Some(true));
    }
    let page = page_size();
    let pages = (offset + len).div_ceil(page) - offset / page;
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: a borrowed, open descriptor; `range` and `stat` are valid, properly laid out
    // (repr(C), as in linux/mman.h) and exclusively borrowed for the call; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_fd().as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        return Ok(Some(stat.nr_cache >= pages));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EOPNOTSUPP) => Ok(None),
        _ => Err(err),
    }
}

/// Keep freed heap memory for reuse instead of handing it back to the kernel (glibc's
/// `malloc`; elsewhere nothing to do). A fill holds a few MiB of upstream body in flight
/// (hyper's read buffers, shared by the writer and the hashers until both are done); with
/// glibc's defaults those buffers are `mmap`ped or trimmed from the heap as they are freed,
/// and every new one faults in and zeroes fresh pages under `recv` (8 % of a miss's CPU in
/// one profile: bench/RESULTS.md, issue 16). Allocations below `mmap_below` come from the heap,
/// and a heap keeps up to `trim_above` bytes free at its top. Returns whether both took.
pub fn keep_freed_memory(mmap_below: usize, trim_above: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let to_int = |n: usize| libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator parameters; called before other threads run.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, to_int(mmap_below)) };
        // SAFETY: as above.
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, to_int(trim_above)) };
        mmap == 1 && trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (mmap_below, trim_above);
        false
    }
}

/// Bytes received on socket `fd` that nobody has read yet (`FIONREAD`): whether a client's
/// request is waiting on a connection the proxy thinks idle. Pass a descriptor the caller
/// keeps open for the call (a closed or reused number answers for another file, or fails);
/// whatever the number, the call writes only its own counter.
pub fn unread_bytes(fd: std::os::fd::RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `n`, exclusively
    // borrowed for the call; any descriptor number is memory-safe (a bad one is EBADF).
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no memory effects.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            n as u64
        } else {
            4096
        }
    })
}

/// The one `/dev/null` handle `warm` writes to, opened on first use (call at start, so the
/// process's descriptor count does not move later).
pub fn dev_null() -> &'static io::Result<File> {
    static NULL: OnceLock<io::Result<File>> = OnceLock::new();
    NULL.get_or_init(|| File::options().write(true).open("/dev/null"))
}

/// Bring `len` bytes of `file` from `offset` into the page cache and wait until they are
/// there, without copying them to user space: a `sendfile` to `/dev/null` (the kernel reads the
/// pages into a pipe and the null device drops the references). Blocks: run it off the
/// runtime. Returns the bytes now cached (less only at the end of the file).
pub fn warm(file: &impl AsFd, offset: u64, len: u64) -> io::Result<u64> {
    let null = match dev_null() {
        Ok(null) => null,
        Err(e) => return Err(io::Error::new(e.kind(), format!("/dev/null: {e}"))),
    };
    let mut done = 0;
    while done < len {
        let count = (len - done).min(1 << 30) as usize;
        match sendfile(null, file, offset + done, count) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn unread_bytes_counts_what_arrived_and_was_not_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        assert_eq!(unread_bytes(server.as_raw_fd()).expect("ioctl"), 0);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        // Loopback delivers within the write; wait for it all the same, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while unread_bytes(server.as_raw_fd()).expect("ioctl") < 18 {
            assert!(std::time::Instant::now() < deadline, "never arrived");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut buf = [0u8; 10];
        server.read_exact(&mut buf).expect("read");
        assert_eq!(unread_bytes(server.as_raw_fd()).expect("ioctl"), 8);
        assert!(unread_bytes(-1).is_err());
    }

    #[test]
    fn sendfile_moves_file_bytes_to_a_socket() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"hello sendfile").expect("write");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server_side, _) = listener.accept().expect("accept");
        assert_eq!(sendfile(&client, &file, 6, 100).expect("sendfile"), 8);
        assert_eq!(sendfile(&client, &file, 14, 100).expect("at the end"), 0);
        drop(client);
        let mut got = String::new();
        server_side.read_to_string(&mut got).expect("read");
        assert_eq!(got, "sendfile");
        advise_sequential(&file, 0, 14).expect("fadvise");
    }

    #[test]
    fn preallocating_allocates_the_blocks_and_keeps_the_size() {
        use std::os::unix::fs::MetadataExt;
        const LEN: u64 = 4 << 20;
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"head").expect("write");
        match preallocate(&file, LEN) {
            Ok(()) => {}
            // A filesystem without fallocate: nothing to observe (callers ignore the error).
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return,
            Err(e) => panic!("fallocate: {e}"),
        }
        let meta = file.metadata().expect("stat");
        assert_eq!(meta.len(), 4, "the size is kept");
        assert!(
            meta.blocks() * 512 >= LEN,
            "{} bytes allocated for {LEN}",
            meta.blocks() * 512
        );
    }

    #[test]
    fn warming_brings_a_cold_range_into_the_page_cache() {
        const LEN: u64 = 4 << 20;
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        file.write_all(&vec![7u8; LEN as usize]).expect("write");
        file.as_file().sync_all().expect("fsync");
        // Written pages are clean after the fsync, so DONTNEED drops them.
        advise_dont_need(file.as_file(), 0, LEN).expect("dontneed");
        let Some(still_cached) = is_cached(file.as_file(), 0, LEN).expect("cachestat") else {
            return; // a kernel without cachestat (before 6.5): nothing to observe here
        };
        // tmpfs keeps every page in memory whatever the advice: then warm() only counts.
        if still_cached {
            assert_eq!(warm(file.as_file(), 0, LEN).expect("warm"), LEN);
            return;
        }
        assert_eq!(
            warm(file.as_file(), 1 << 20, 2 << 20).expect("warm"),
            2 << 20
        );
        assert_eq!(
            is_cached(file.as_file(), 1 << 20, 2 << 20).expect("cachestat"),
            Some(true)
        );
        // Past the end: warm stops at the file's end.
        assert_eq!(warm(file.as_file(), LEN - 10, 100).expect("warm"), 10);
        assert_eq!(is_cached(file.as_file(), 0, 0).expect("empty"), Some(true));
    }
}
