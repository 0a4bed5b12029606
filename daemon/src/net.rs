//! Loopback port helpers for whoever starts daemons on this host: the CLI's `demo` and the
//! test harnesses.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Mutex;

/// UDP ports [`free_udp_port`] handed out in this process.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Most ports tried before giving up.
const TRIES: usize = 100;

/// A UDP port on `127.0.0.1` that was free a moment ago (bound to port 0, then released),
/// never one this process handed out before, so two daemons started by one process do not
/// race for the same port.
pub fn free_udp_port() -> io::Result<u16> {
    for _ in 0..TRIES {
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        if taken.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no fresh UDP port on 127.0.0.1 after {TRIES} tries"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let a = free_udp_port().expect("a port");
        let b = free_udp_port().expect("another port");
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }
}
