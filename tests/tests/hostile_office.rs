//! A hostile office contained: what an office holding a valid certificate bundle can try
//! against real daemons (played by the rogue peer), and for each attack that it is refused and
//! counted, that every acknowledged write of the honest offices stays readable everywhere,
//! that an honest office still gets a new write through within seconds, and that the attacked
//! node's memory stays bounded. One module per kind of attack.

#[allow(dead_code)]
mod common;

#[path = "hostile_office/shared.rs"]
#[allow(dead_code)]
mod shared;

#[path = "hostile_office/handshake.rs"]
mod handshake;
#[path = "hostile_office/reads.rs"]
mod reads;
#[path = "hostile_office/session.rs"]
mod session;
#[path = "hostile_office/signatures.rs"]
mod signatures;
#[path = "hostile_office/small.rs"]
mod small;
