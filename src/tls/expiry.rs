//! When a certificate expires: its `notAfter`, read from the DER with a few
//! lines of X.509 walking (rustls checks certificates but does not expose
//! their dates), for the log and the `tollgate_tls_cert_not_after_seconds`
//! gauge: alert on it before a rotation that never happened bites.

use crate::calendar::days_from_civil;

/// The `notAfter` of a DER certificate, in seconds since the epoch (UTC);
/// `None` when the DER is not shaped like a certificate.
pub fn not_after_secs(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = tlv(der)?; // Certificate ::= SEQUENCE
    let (_, tbs, _) = tlv(cert)?; // tbsCertificate ::= SEQUENCE
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2; // [0] version
    }
    rest = tlv(rest)?.2; // serialNumber
    rest = tlv(rest)?.2; // signature AlgorithmIdentifier
    rest = tlv(rest)?.2; // issuer Name
    let (_, validity, _) = tlv(rest)?; // validity ::= SEQUENCE { notBefore, notAfter }
    let (tag, after, _) = tlv(tlv(validity)?.2)?;
    time(tag, std::str::from_utf8(after).ok()?)
}

/// One DER element: (tag, contents, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (first as usize, b)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        (b[..n].iter().fold(0usize, |acc, &x| (acc << 8) | x as usize), &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`, tag 0x18) as seconds since the epoch.
fn time(tag: u8, s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i32 = s[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        (0x18, 14) => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| rest[i..i + 2].parse::<u32>().ok();
    let (month, day, h, m, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_not_after_in_both_time_forms() {
        // UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280).
        assert_eq!(not_after_secs(&cert_until(2031, 5, 17)), Some(days_from_civil(2031, 5, 17) * 86_400));
        assert_eq!(not_after_secs(&cert_until(2051, 1, 2)), Some(days_from_civil(2051, 1, 2) * 86_400));
        assert_eq!(not_after_secs(b"\x30\x03\x02\x01\x01"), None);
        assert_eq!(not_after_secs(&[]), None);
    }
}
