//! The `grpc-timeout` request header: parsing (server) and encoding (client).
//!
//! Pure functions, no I/O. Rules from PROTOCOL-HTTP2.md in grpc/grpc are
//! paraphrased beside the checks that enforce them.

use std::time::Duration;

/// Spec: the TimeoutValue is written with at most 8 ASCII digits.
pub const MAX_TIMEOUT_DIGITS: usize = 8;

/// Largest value that fits in `MAX_TIMEOUT_DIGITS` digits.
const MAX_TIMEOUT_VALUE: u64 = 99_999_999;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    #[error("grpc-timeout is empty or has no digits before the unit")]
    Empty,
    #[error("grpc-timeout has {digits} digits, at most 8 are allowed")]
    TooManyDigits { digits: usize },
    #[error("grpc-timeout value contains the non-digit byte 0x{byte:02x}")]
    InvalidDigit { byte: u8 },
    #[error("grpc-timeout has unknown unit byte 0x{unit:02x}, expected one of H M S m u n")]
    UnknownUnit { unit: u8 },
}

/// Parses a `grpc-timeout` header value such as `"100m"` or `"5S"`.
///
/// A value of zero is accepted and yields `Duration::ZERO` (a deadline that
/// has already passed). The spec says "positive", but grpc-go accepts zero
/// and treating it as "already expired" is the safe reading.
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    // Spec: Timeout is TimeoutValue immediately followed by a single
    // TimeoutUnit byte, so the unit is always the last byte.
    let Some((&unit, digits)) = value.split_last() else {
        return Err(TimeoutError::Empty);
    };
    // Spec: TimeoutValue is a positive integer written as ASCII digits; an
    // empty value cannot express one.
    if digits.is_empty() {
        return Err(TimeoutError::Empty);
    }
    // Spec: at most 8 digits. Checked before accumulating so that the number
    // below is bounded by 99_999_999 and every later multiplication is
    // comfortably inside u64 (99_999_999 hours is about 3.6e11 seconds).
    if digits.len() > MAX_TIMEOUT_DIGITS {
        return Err(TimeoutError::TooManyDigits {
            digits: digits.len(),
        });
    }
    let mut amount: u64 = 0;
    for &byte in digits {
        // Spec: only ASCII decimal digits; no sign, space or separator.
        if !byte.is_ascii_digit() {
            return Err(TimeoutError::InvalidDigit { byte });
        }
        amount = amount * 10 + u64::from(byte - b'0');
    }
    // Spec: TimeoutUnit is exactly one of H (hour), M (minute), S (second),
    // m (millisecond), u (microsecond), n (nanosecond); case matters.
    let duration = match unit {
        b'H' => Duration::from_secs(amount.saturating_mul(3600)),
        b'M' => Duration::from_secs(amount.saturating_mul(60)),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return Err(TimeoutError::UnknownUnit { unit }),
    };
    Ok(duration)
}

/// Encodes a timeout for the `grpc-timeout` header, using the finest unit
/// whose value fits in 8 digits.
///
/// Values are rounded up within the chosen unit (as grpc-go does) so that
/// the server never sees a shorter deadline than the caller asked for.
/// Durations beyond 99_999_999 hours (about 11,400 years) are clamped.
pub fn encode_grpc_timeout(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    // (unit suffix, nanoseconds per unit), finest first.
    const UNITS: [(char, u128); 6] = [
        ('n', 1),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ];
    for (suffix, nanos_per_unit) in UNITS {
        let amount = nanos.div_ceil(nanos_per_unit);
        if amount <= u128::from(MAX_TIMEOUT_VALUE) {
            return format!("{amount}{suffix}");
        }
    }
    format!("{MAX_TIMEOUT_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases: [(&[u8], Duration); 6] = [
            (b"2H", Duration::from_secs(7200)),
            (b"3M", Duration::from_secs(180)),
            (b"5S", Duration::from_secs(5)),
            (b"100m", Duration::from_millis(100)),
            (b"250u", Duration::from_micros(250)),
            (b"999n", Duration::from_nanos(999)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_grpc_timeout(input), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn eight_digits_are_accepted_nine_rejected() {
        assert_eq!(
            parse_grpc_timeout(b"99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse_grpc_timeout(b"00000001S"), Ok(Duration::from_secs(1)));
        assert_eq!(
            parse_grpc_timeout(b"100000000n"),
            Err(TimeoutError::TooManyDigits { digits: 9 })
        );
        assert_eq!(
            parse_grpc_timeout(b"99999999999999999999999H"),
            Err(TimeoutError::TooManyDigits { digits: 23 })
        );
    }

    #[test]
    fn zero_is_an_expired_deadline() {
        assert_eq!(parse_grpc_timeout(b"0S"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_values() {
        assert_eq!(parse_grpc_timeout(b""), Err(TimeoutError::Empty));
        assert_eq!(parse_grpc_timeout(b"S"), Err(TimeoutError::Empty));
        assert_eq!(parse_grpc_timeout(b"5"), Err(TimeoutError::Empty));
        assert_eq!(
            parse_grpc_timeout(b"10"),
            Err(TimeoutError::UnknownUnit { unit: b'0' })
        );
        assert_eq!(
            parse_grpc_timeout(b"5s"),
            Err(TimeoutError::UnknownUnit { unit: b's' })
        );
        assert_eq!(
            parse_grpc_timeout(b"5h"),
            Err(TimeoutError::UnknownUnit { unit: b'h' })
        );
        assert_eq!(
            parse_grpc_timeout(b"-5S"),
            Err(TimeoutError::InvalidDigit { byte: b'-' })
        );
        assert_eq!(
            parse_grpc_timeout(b"+5S"),
            Err(TimeoutError::InvalidDigit { byte: b'+' })
        );
        assert_eq!(
            parse_grpc_timeout(b" 5S"),
            Err(TimeoutError::InvalidDigit { byte: b' ' })
        );
        assert_eq!(
            parse_grpc_timeout(b"1.5S"),
            Err(TimeoutError::InvalidDigit { byte: b'.' })
        );
        assert_eq!(
            parse_grpc_timeout("5\u{e9}".as_bytes()),
            Err(TimeoutError::InvalidDigit { byte: 0xC3 })
        );
    }

    #[test]
    fn never_panics_on_arbitrary_short_inputs() {
        let alphabet = b"0123456789HMSmun -+x\xff";
        for first in alphabet {
            for second in alphabet {
                for third in alphabet {
                    let _ = parse_grpc_timeout(&[*first, *second, *third]);
                }
            }
        }
    }

    #[test]
    fn encodes_with_finest_fitting_unit() {
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "0n");
        assert_eq!(encode_grpc_timeout(Duration::from_nanos(1)), "1n");
        assert_eq!(
            encode_grpc_timeout(Duration::from_nanos(99_999_999)),
            "99999999n"
        );
        assert_eq!(
            encode_grpc_timeout(Duration::from_nanos(100_000_000)),
            "100000u"
        );
        assert_eq!(encode_grpc_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(100)), "100000m");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(100_000)), "100000S");
        assert_eq!(
            encode_grpc_timeout(Duration::from_secs(100_000_000)),
            "1666667M"
        );
        assert_eq!(encode_grpc_timeout(Duration::MAX), "99999999H");
    }

    #[test]
    fn encoding_rounds_up_not_down() {
        // 100_000_001 ns does not fit as nanoseconds; in microseconds it is
        // 100_000.001, which must become 100001u, not 100000u.
        assert_eq!(
            encode_grpc_timeout(Duration::from_nanos(100_000_001)),
            "100001u"
        );
    }

    #[test]
    fn encode_then_parse_never_shortens() {
        let samples = [
            Duration::ZERO,
            Duration::from_nanos(12_345),
            Duration::from_millis(1500),
            Duration::from_secs(3),
            Duration::from_secs(86_400 * 365),
            Duration::new(123_456, 789_012_345),
        ];
        for sample in samples {
            let encoded = encode_grpc_timeout(sample);
            let parsed = parse_grpc_timeout(encoded.as_bytes());
            assert!(matches!(parsed, Ok(value) if value >= sample), "{encoded}");
        }
    }
}
