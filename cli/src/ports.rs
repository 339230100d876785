//! Ports for servers that another process starts (a throwaway PostgreSQL, pgbouncer, a gateway
//! under test), chosen so that nothing takes them between the choice and the bind.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use rand::Rng;

/// Lowest port handed out: above the usual services' ports (5432, 8080, 9090, ...).
const LOWEST: u16 = 10_000;

/// A TCP port on 127.0.0.1 that nothing listens on now, for a server another process will
/// bind soon after.
///
/// `bind(0)` would hand out a port of the kernel's ephemeral range, the range outgoing
/// connections take their local ports from, so a client of this or any other process could take
/// it before the server binds it ("Address already in use"). This port is instead taken at random
/// between 10000 and the start of that range (`net.ipv4.ip_local_port_range`), where no outgoing
/// connection lands; a port that cannot be bound now is skipped, and one process never gets the
/// same port twice. Two processes choosing at the same moment can still pick the same port, with
/// a chance of about one in twenty thousand per pair of calls.
pub fn free_port() -> io::Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let highest = ephemeral_start().saturating_sub(1);
    if highest < LOWEST + 1_000 {
        // No room below the ephemeral range: the kernel's choice is the best left.
        return Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port());
    }
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(LOWEST..=highest);
        if !given.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free port on 127.0.0.1 between {LOWEST} and {highest} in 1000 tries"),
    ))
}

/// The first port of the kernel's ephemeral range; Linux's default where it cannot be read.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bindable_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        let start = ephemeral_start();
        for port in ports {
            if start > LOWEST + 1_000 {
                assert!(
                    (LOWEST..start).contains(&port),
                    "{port} is outside 10000..{start}"
                );
            }
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }
}
