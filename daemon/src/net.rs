//! Loopback port helpers for whoever starts daemons on this host: the CLI's `demo` and the
//! test harnesses.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Ports [`free_udp_port`] and [`free_tcp_port`] handed out in this process.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Most ports tried before giving up.
const TRIES: usize = 100;

/// A UDP port on `127.0.0.1` that was free a moment ago (bound to port 0, then released),
/// never one this process handed out before, so two daemons started by one process do not
/// race for the same port.
pub fn free_udp_port() -> io::Result<u16> {
    fresh("UDP", || {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()
            .map(|a| a.port())
    })
}

/// A TCP port on `127.0.0.1`, as [`free_udp_port`] gives UDP ones.
pub fn free_tcp_port() -> io::Result<u16> {
    fresh("TCP", || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()
            .map(|a| a.port())
    })
}

/// A port from `bind` that this process has not handed out before.
fn fresh(kind: &str, bind: impl Fn() -> io::Result<u16>) -> io::Result<u16> {
    for _ in 0..TRIES {
        let port = bind()?;
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        if taken.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no fresh {kind} port on 127.0.0.1 after {TRIES} tries"),
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
        let c = free_tcp_port().expect("a TCP port");
        let d = free_tcp_port().expect("another TCP port");
        assert_ne!(c, d);
    }
}
