//! When a certificate is valid: its `notBefore` and `notAfter`, read from the DER bytes with a
//! few lines of ASN.1 walking. rustls never checks a server's own certificate (that is the
//! client's job), but a server that starts with an expired one fails every client at once, so
//! `tls::Certificate::load` refuses it up front. No I/O and no clock: the caller passes `now`.

/// The validity period of a certificate, in seconds since the Unix epoch (RFC 5280 section
/// 4.1.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// DER tags this walk meets (X.690 section 8).
const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xA0; // [0] EXPLICIT, the TBSCertificate's optional version
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Reads the validity of an X.509 certificate in DER. Errors say which part was malformed.
///
/// `Certificate ::= SEQUENCE { tbsCertificate, ... }` and `TBSCertificate ::= SEQUENCE {
/// [0] version OPTIONAL, serialNumber, signature, issuer, validity, ... }`: skip to the fifth
/// element (fourth without a version) and read its two times.
pub fn validity(certificate: &[u8]) -> Result<Validity, &'static str> {
    let (tag, certificate, _) = element(certificate)?;
    let (tbs_tag, mut tbs, _) = element(certificate)?;
    if tag != SEQUENCE || tbs_tag != SEQUENCE {
        return Err("not an X.509 certificate");
    }
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    for _ in ["serial number", "signature algorithm", "issuer"] {
        tbs = element(tbs)?.2;
    }
    let (tag, times, _) = element(tbs)?;
    if tag != SEQUENCE {
        return Err("no validity in the certificate");
    }
    let (before_tag, before, rest) = element(times)?;
    let (after_tag, after, _) = element(rest)?;
    Ok(Validity { not_before: time(before_tag, before)?, not_after: time(after_tag, after)? })
}

/// Splits one DER element off the front of `bytes`: its tag, its contents and what follows.
fn element(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    let truncated = "truncated DER";
    let (&tag, rest) = bytes.split_first().ok_or(truncated)?;
    let (&first, rest) = rest.split_first().ok_or(truncated)?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length's bytes, big-endian. Four are plenty.
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || rest.len() < count {
            return Err("bad DER length");
        }
        let length = rest[..count].iter().fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err(truncated);
    }
    let (contents, rest) = rest.split_at(length);
    Ok((tag, contents, rest))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049 per RFC 5280) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`) as seconds since the Unix epoch.
fn time(tag: u8, text: &[u8]) -> Result<i64, &'static str> {
    let bad = "bad time in the certificate";
    let digits = |range: std::ops::Range<usize>| -> Result<i64, &'static str> {
        let part = text.get(range).ok_or(bad)?;
        part.iter().try_fold(0i64, |value, &byte| {
            if byte.is_ascii_digit() { Ok(value * 10 + i64::from(byte - b'0')) } else { Err(bad) }
        })
    };
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let year = digits(0..2)?;
            (if year < 50 { 2000 + year } else { 1900 + year }, 2)
        }
        (GENERALIZED_TIME, 15) => (digits(0..4)?, 4),
        _ => return Err(bad),
    };
    if text.last() != Some(&b'Z') {
        return Err(bad);
    }
    let field = |index: usize| digits(rest + 2 * index..rest + 2 * index + 2);
    let (month, day, hour, minute, second) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date and time of `seconds` since the Unix epoch, for log lines: `2026-12-01 19:30:00 UTC`.
pub fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Hinnant's `civil_from_days`.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_time_encodings_read_as_unix_seconds() {
        assert_eq!(time(UTC_TIME, b"700101000000Z"), Ok(0));
        assert_eq!(time(UTC_TIME, b"491231235959Z"), Ok(2_524_607_999));
        assert_eq!(time(GENERALIZED_TIME, b"20261201193000Z"), Ok(1_796_153_400));
        assert_eq!(time(GENERALIZED_TIME, b"19691231235959Z"), Ok(-1));
        for bad in [&b"2612011930Z"[..], b"261301000000Z", b"26120119300aZ", b"261201193000+"] {
            assert!(time(UTC_TIME, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn dates_print_back() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_153_400), "2026-12-01 19:30:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&[][..], &[0x30], &[0x30, 0x85, 1, 1, 1, 1, 1], &[0x30, 0x03, 0x30, 0x01], &[0x04, 0]] {
            assert!(validity(bad).is_err(), "{bad:?}");
        }
    }
}
