//! Token checking on arbitrary text (the input, lossily UTF-8, is what a client can put in
//! `?token=`): no panic, and a token is accepted only with a valid name and an expiry still to come.
//! A second half makes real tokens (signed with the server's secret) and flips one byte, so the
//! fuzzer spends its time near valid tokens too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::auth::{Verifier, mint};

const SECRET: &[u8] = b"the fuzzer's secret, 32 bytes or longer";
const NOW_MS: u64 = 1_764_100_000_000;

fn check(verifier: &Verifier, token: &str) {
    if let Ok(identity) = verifier.verify(token, NOW_MS, |name| !name.is_empty() && name.len() <= 32) {
        assert!(!identity.name.is_empty() && identity.name.len() <= 32);
        assert!(identity.expires_at_ms > NOW_MS);
    }
}

fuzz_target!(|data: &[u8]| {
    let verifier = Verifier::new(SECRET).expect("the secret is long enough");
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        check(&verifier, &String::from_utf8_lossy(rest));
        return;
    }
    // A real token for a name from the input, then one byte changed at a place and to a value
    // the input chooses.
    let (Some(&at), Some(&value)) = (rest.first(), rest.get(1)) else { return };
    let name =
        String::from_utf8_lossy(rest.get(2..).unwrap_or_default()).chars().take(32).collect::<String>();
    let Ok(token) = mint(SECRET, &name, NOW_MS / 1000 + 60, None) else { return };
    let mut bytes = token.into_bytes();
    let index = usize::from(at) % bytes.len();
    bytes[index] = value;
    check(&verifier, &String::from_utf8_lossy(&bytes));
});
