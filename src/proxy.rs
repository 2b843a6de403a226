//! Who the client is when a proxy stands in front: the address in `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`, believed only when the TCP peer is a proxy the operator trusts
//! (`--trusted-proxy`), and read right to left, so a client cannot choose its own address by
//! sending the header: each proxy appends the address it saw, and the first one from the right
//! that is not a trusted proxy is the client.

use std::net::{IpAddr, SocketAddr};

pub use ipnet::IpNet;

/// The client's address: `peer` itself unless `peer` is inside one of `trusted`, in which case
/// the forwarding headers say (`forwarded` first, else `x_forwarded_for`; each the header's
/// values joined with commas, in the order they came). A header naming no usable address leaves
/// the last proxy's view: the nearest hop that could not be identified is reported as the address
/// of the proxy that saw it.
pub fn client_address(
    peer: SocketAddr,
    forwarded: Option<&str>,
    x_forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let hops: Vec<Option<SocketAddr>> = match (forwarded, x_forwarded_for) {
        (Some(forwarded), _) => forwarded.split(',').map(forwarded_for).collect(),
        (None, Some(list)) => list.split(',').map(|hop| parse_node(hop.trim())).collect(),
        (None, None) => return peer,
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(address) => {
                client = address;
                if !is_trusted(address.ip()) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// The `for=` node of one element of a `Forwarded` header (`for=192.0.2.60;proto=http;by=...`).
fn forwarded_for(element: &str) -> Option<SocketAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| parse_node(value.trim().trim_matches('"')))?
    })
}

/// An address as proxies write it: `192.0.2.60`, `192.0.2.60:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`. Anything else (`unknown`, an obfuscated `_hidden`) is no address.
fn parse_node(node: &str) -> Option<SocketAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    if let Ok(address) = node.parse::<SocketAddr>() {
        return Some(address);
    }
    // `[v6]` without a port.
    let inner = node.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 5555)
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().unwrap()).collect()
    }

    fn client(from: &str, forwarded: Option<&str>, xff: Option<&str>, trusted: &[&str]) -> String {
        client_address(peer(from), forwarded, xff, &nets(trusted)).to_string()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        assert_eq!(client("203.0.113.9", None, Some("10.9.9.9"), &[]), "203.0.113.9:5555");
        assert_eq!(client("203.0.113.9", Some("for=10.9.9.9"), None, &["127.0.0.1/32"]), "203.0.113.9:5555");
    }

    #[test]
    fn a_trusted_proxy_names_the_client_read_right_to_left() {
        let trusted = ["127.0.0.1/32", "10.0.0.0/8"];
        assert_eq!(client("127.0.0.1", None, Some("198.51.100.7"), &trusted), "198.51.100.7:0");
        // The client sent its own header ("6.6.6.6"); our proxies appended what they saw.
        assert_eq!(
            client("127.0.0.1", None, Some("6.6.6.6, 198.51.100.7, 10.1.2.3"), &trusted),
            "198.51.100.7:0"
        );
        // Every hop trusted: the leftmost one.
        assert_eq!(client("127.0.0.1", None, Some("10.0.0.5, 10.1.2.3"), &trusted), "10.0.0.5:0");
        assert_eq!(client("127.0.0.1", None, None, &trusted), "127.0.0.1:5555");
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_takes_ports_and_ipv6() {
        let trusted = ["127.0.0.0/8", "::1/128"];
        let forwarded = r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https;by=127.0.0.1"#;
        assert_eq!(
            client("127.0.0.1", Some(forwarded), Some("198.51.100.7"), &trusted),
            "[2001:db8:cafe::17]:4711"
        );
        assert_eq!(client("127.0.0.1", Some("For=192.0.2.60:80"), None, &trusted), "192.0.2.60:80");
        assert_eq!(client("127.0.0.1", Some("for=\"[2001:db8::1]\""), None, &trusted), "[2001:db8::1]:0");
    }

    #[test]
    fn an_unknown_hop_stops_the_walk_at_the_proxy_that_saw_it() {
        let trusted = ["127.0.0.1/32", "10.0.0.0/8"];
        assert_eq!(
            client("127.0.0.1", Some("for=198.51.100.7, for=unknown, for=10.0.0.2"), None, &trusted),
            "10.0.0.2:0"
        );
        assert_eq!(client("127.0.0.1", Some("for=_hidden"), None, &trusted), "127.0.0.1:5555");
        assert_eq!(client("127.0.0.1", None, Some("garbage"), &trusted), "127.0.0.1:5555");
    }
}
