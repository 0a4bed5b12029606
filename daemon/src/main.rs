//! officesyncd: the officesync node daemon (placeholder until the node runner lands).

fn main() {}
