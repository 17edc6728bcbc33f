//! The only module with `unsafe` code: safe wrappers over the Linux calls the proxy needs
//! that std does not offer (`sendfile(2)`, `posix_fadvise(2)`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

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

/// Tell the kernel `len` bytes of `file` from `offset` will be read soon, sequentially, so it
/// reads ahead and a later `sendfile` finds them in the page cache. Advice only: errors are
/// ignored by callers.
pub fn advise_sequential(file: &impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    let fd = file.as_fd().as_raw_fd();
    let (off, len) = (offset as libc::off_t, len as libc::off_t);
    // SAFETY: plain integer arguments and a borrowed, open descriptor.
    let rc = unsafe {
        let seq = libc::posix_fadvise(fd, off, len, libc::POSIX_FADV_SEQUENTIAL);
        if seq != 0 {
            seq
        } else {
            libc::posix_fadvise(fd, off, len, libc::POSIX_FADV_WILLNEED)
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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
}
