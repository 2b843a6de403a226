//! The client address behind a trusted proxy, from arbitrary `Forwarded` and `X-Forwarded-For`
//! values: no panic; an untrusted peer is always its own address, whatever the headers say.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use wschat::proxy::{IpNet, client_address};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let (forwarded, x_forwarded_for) = text.split_once('\n').unwrap_or((&text, ""));
    let trusted: Vec<IpNet> =
        ["127.0.0.0/8", "10.0.0.0/8", "::1/128"].iter().map(|net| net.parse().unwrap()).collect();
    let peer =
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(if choice % 2 == 0 { 127 } else { 203 }, 0, 0, 1)), 4242);
    let headers = ((choice & 2 != 0).then_some(forwarded), (choice & 4 != 0).then_some(x_forwarded_for));
    let client = client_address(peer, headers.0, headers.1, &trusted);
    if !trusted.iter().any(|net| net.contains(&peer.ip())) {
        assert_eq!(client, peer);
    }
});
