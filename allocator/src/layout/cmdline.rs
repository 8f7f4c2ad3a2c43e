//! The `kernelcore=`, `movablecore=` and `movable_node` boot parameters, parsed as Linux 6.1
//! parses them (`cmdline_parse_kernelcore`, `cmdline_parse_movablecore`,
//! `cmdline_parse_core`, `memparse`), but strict: where the kernel silently reads garbage as 0
//! or warns and goes on, this module returns an error naming the value.
//!
//! Numbers follow `simple_strtoull(p, &end, 0)`: `0x`/`0X` prefix for hexadecimal, a leading
//! `0` for octal, decimal otherwise. A size may carry one suffix `K`, `M`, `G`, `T`, `P` or `E`
//! in either case (powers of 1024). `nn%` is a percentage of all memory (0..=100).

use thiserror::Error;

/// Problems with a `kernelcore=` / `movablecore=` value or a boot command line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CmdlineError {
    /// The value is empty.
    #[error("{param}= needs a value (nn[KMGTPE], nn% or, for kernelcore, mirror)")]
    Empty {
        /// `kernelcore` or `movablecore`.
        param: &'static str,
    },
    /// The value does not start with a number.
    #[error("{param}={value}: not a number (expected nn[KMGTPE], nn%{mirror})", mirror = if *param == "kernelcore" { " or mirror" } else { "" })]
    NotANumber {
        /// `kernelcore` or `movablecore`.
        param: &'static str,
        /// The value given.
        value: String,
    },
    /// Text after the number that is not one size suffix or `%`.
    #[error(
        "{param}={value}: bad suffix '{suffix}' (expected one of K M G T P E, either case, or %)"
    )]
    BadSuffix {
        /// `kernelcore` or `movablecore`.
        param: &'static str,
        /// The value given.
        value: String,
        /// The unexpected text.
        suffix: String,
    },
    /// A percentage above 100.
    #[error("{param}={value}: percentage {percent} is above 100")]
    PercentTooLarge {
        /// `kernelcore` or `movablecore`.
        param: &'static str,
        /// The value given.
        value: String,
        /// The percentage.
        percent: u64,
    },
    /// A size that does not fit in 64 bits.
    #[error("{param}={value}: size does not fit in 64 bits")]
    Overflow {
        /// `kernelcore` or `movablecore`.
        param: &'static str,
        /// The value given.
        value: String,
    },
    /// A parameter given twice on one command line.
    #[error("{param}= given twice ({first} and {second})")]
    Duplicate {
        /// The parameter.
        param: &'static str,
        /// The first value.
        first: String,
        /// The second value.
        second: String,
    },
    /// A word of the command line this model does not know.
    #[error("unknown boot parameter '{word}' (known: kernelcore=, movablecore=, movable_node)")]
    UnknownParameter {
        /// The word.
        word: String,
    },
}

/// A size request for `kernelcore=` or `movablecore=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreSpec {
    /// An absolute size in bytes (the kernel keeps `bytes >> PAGE_SHIFT` pages).
    Bytes(u64),
    /// A percentage of all memory (`required_*_percent`), 0..=100.
    Percent(u64),
}

/// The value of `kernelcore=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelcoreSpec {
    /// `kernelcore=nn[KMGTPE]` or `kernelcore=nn%`.
    Core(CoreSpec),
    /// `kernelcore=mirror`: only mirrored memory serves the kernel (`mirrored_kernelcore`).
    Mirror,
}

/// `simple_strtoull(s, &end, 0)`: returns the number and the rest of the text, or `None` when
/// no digit was read or the number overflows 64 bits (`Some(Err(()))`).
fn simple_strtoull(s: &str) -> Option<Result<(u64, &str), ()>> {
    let bytes = s.as_bytes();
    let (radix, start) = if bytes.len() > 2
        && bytes[0] == b'0'
        && (bytes[1] | 0x20) == b'x'
        && bytes[2].is_ascii_hexdigit()
    {
        (16, 2)
    } else if bytes.first() == Some(&b'0') {
        (8, 0)
    } else {
        (10, 0)
    };
    let digits = s[start..]
        .bytes()
        .take_while(|b| (*b as char).is_digit(radix))
        .count();
    if digits == 0 {
        return None;
    }
    let (num, rest) = s[start..].split_at(digits);
    Some(
        u64::from_str_radix(num, radix)
            .map(|v| (v, rest))
            .map_err(|_| ()),
    )
}

/// `memparse()`: a number with an optional `K`/`M`/`G`/`T`/`P`/`E` suffix (either case).
/// Returns the size in bytes and the text after it; `None` if no number was read,
/// `Some(Err(()))` if the size overflows 64 bits (the kernel would wrap).
pub fn memparse(s: &str) -> Option<Result<(u64, &str), ()>> {
    let (value, rest) = match simple_strtoull(s)? {
        Ok(v) => v,
        Err(()) => return Some(Err(())),
    };
    let shift = match rest.as_bytes().first().map(|b| b.to_ascii_uppercase()) {
        Some(b'K') => 10,
        Some(b'M') => 20,
        Some(b'G') => 30,
        Some(b'T') => 40,
        Some(b'P') => 50,
        Some(b'E') => 60,
        _ => return Some(Ok((value, rest))),
    };
    if value.leading_zeros() < shift {
        return Some(Err(()));
    }
    Some(Ok((value << shift, &rest[1..])))
}

/// `cmdline_parse_core()`: `nn%` or `nn[KMGTPE]` for the parameter `param`.
pub fn cmdline_parse_core(param: &'static str, p: &str) -> Result<CoreSpec, CmdlineError> {
    if p.is_empty() {
        return Err(CmdlineError::Empty { param });
    }
    let not_a_number = || CmdlineError::NotANumber {
        param,
        value: p.to_string(),
    };
    let overflow = || CmdlineError::Overflow {
        param,
        value: p.to_string(),
    };
    let (number, tail) = simple_strtoull(p)
        .ok_or_else(not_a_number)?
        .map_err(|()| overflow())?;
    if let Some(after) = tail.strip_prefix('%') {
        if !after.is_empty() {
            return Err(CmdlineError::BadSuffix {
                param,
                value: p.to_string(),
                suffix: tail.to_string(),
            });
        }
        if number > 100 {
            return Err(CmdlineError::PercentTooLarge {
                param,
                value: p.to_string(),
                percent: number,
            });
        }
        return Ok(CoreSpec::Percent(number));
    }
    let (bytes, rest) = memparse(p)
        .ok_or_else(not_a_number)?
        .map_err(|()| overflow())?;
    if !rest.is_empty() {
        return Err(CmdlineError::BadSuffix {
            param,
            value: p.to_string(),
            suffix: tail.to_string(),
        });
    }
    Ok(CoreSpec::Bytes(bytes))
}

/// `cmdline_parse_kernelcore()`: `mirror`, `nn%` or `nn[KMGTPE]`.
pub fn cmdline_parse_kernelcore(p: &str) -> Result<KernelcoreSpec, CmdlineError> {
    if p == "mirror" {
        return Ok(KernelcoreSpec::Mirror);
    }
    cmdline_parse_core("kernelcore", p).map(KernelcoreSpec::Core)
}

/// `cmdline_parse_movablecore()`: `nn%` or `nn[KMGTPE]`.
pub fn cmdline_parse_movablecore(p: &str) -> Result<CoreSpec, CmdlineError> {
    cmdline_parse_core("movablecore", p)
}

/// The boot parameters that shape ZONE_MOVABLE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// `kernelcore=`.
    pub kernelcore: Option<KernelcoreSpec>,
    /// `movablecore=`.
    pub movablecore: Option<CoreSpec>,
    /// `movable_node`: memory of hotpluggable regions goes to ZONE_MOVABLE, and
    /// `kernelcore=`/`movablecore=` sizes are ignored.
    pub movable_node: bool,
}

impl KernelArgs {
    /// Builds the arguments from the values of `kernelcore=` and `movablecore=` (without the
    /// `name=` part) and the `movable_node` switch.
    pub fn from_values(
        kernelcore: Option<&str>,
        movablecore: Option<&str>,
        movable_node: bool,
    ) -> Result<KernelArgs, CmdlineError> {
        Ok(KernelArgs {
            kernelcore: kernelcore.map(cmdline_parse_kernelcore).transpose()?,
            movablecore: movablecore.map(cmdline_parse_movablecore).transpose()?,
            movable_node,
        })
    }

    /// Parses a boot command line made of `kernelcore=...`, `movablecore=...` and
    /// `movable_node`, separated by whitespace.
    pub fn parse_cmdline(cmdline: &str) -> Result<KernelArgs, CmdlineError> {
        let mut kernelcore: Option<&str> = None;
        let mut movablecore: Option<&str> = None;
        let mut movable_node = false;
        for word in cmdline.split_whitespace() {
            let (slot, param, value) = if let Some(v) = word.strip_prefix("kernelcore=") {
                (&mut kernelcore, "kernelcore", v)
            } else if let Some(v) = word.strip_prefix("movablecore=") {
                (&mut movablecore, "movablecore", v)
            } else if word == "movable_node" {
                movable_node = true;
                continue;
            } else {
                return Err(CmdlineError::UnknownParameter {
                    word: word.to_string(),
                });
            };
            if let Some(first) = slot {
                return Err(CmdlineError::Duplicate {
                    param,
                    first: first.to_string(),
                    second: value.to_string(),
                });
            }
            *slot = Some(value);
        }
        KernelArgs::from_values(kernelcore, movablecore, movable_node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(p: &str) -> Result<CoreSpec, CmdlineError> {
        cmdline_parse_core("kernelcore", p)
    }

    #[test]
    fn memparse_suffixes_in_both_cases() {
        for (text, bytes) in [
            ("4096", 4096u64),
            ("1k", 1 << 10),
            ("1K", 1 << 10),
            ("3m", 3 << 20),
            ("3M", 3 << 20),
            ("2g", 2 << 30),
            ("2G", 2 << 30),
            ("1t", 1 << 40),
            ("1T", 1 << 40),
            ("1p", 1 << 50),
            ("1P", 1 << 50),
            ("1e", 1 << 60),
            ("1E", 1 << 60),
            ("0x10M", 16 << 20),
            ("0X10m", 16 << 20),
            ("010M", 8 << 20),
            ("0", 0),
        ] {
            assert_eq!(core(text), Ok(CoreSpec::Bytes(bytes)), "{text}");
        }
    }

    #[test]
    fn percentages() {
        assert_eq!(core("0%"), Ok(CoreSpec::Percent(0)));
        assert_eq!(core("50%"), Ok(CoreSpec::Percent(50)));
        assert_eq!(core("100%"), Ok(CoreSpec::Percent(100)));
        assert_eq!(core("0x10%"), Ok(CoreSpec::Percent(16)));
        assert_eq!(
            core("120%"),
            Err(CmdlineError::PercentTooLarge {
                param: "kernelcore",
                value: "120%".into(),
                percent: 120
            })
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            core(""),
            Err(CmdlineError::Empty {
                param: "kernelcore"
            })
        );
        assert!(
            matches!(core("abc"), Err(CmdlineError::NotANumber { value, .. }) if value == "abc")
        );
        assert!(matches!(core("-1G"), Err(CmdlineError::NotANumber { .. })));
        assert!(matches!(core(" 1G"), Err(CmdlineError::NotANumber { .. })));
        assert!(
            matches!(core("12X"), Err(CmdlineError::BadSuffix { suffix, .. }) if suffix == "X")
        );
        assert!(
            matches!(core("1GB"), Err(CmdlineError::BadSuffix { suffix, .. }) if suffix == "GB")
        );
        assert!(matches!(core("1.5G"), Err(CmdlineError::BadSuffix { .. })));
        assert!(matches!(core("50%%"), Err(CmdlineError::BadSuffix { .. })));
        assert!(
            matches!(core("09"), Err(CmdlineError::BadSuffix { .. })),
            "octal has no 9"
        );
        assert!(matches!(
            core("99999999999999999999"),
            Err(CmdlineError::Overflow { .. })
        ));
        assert!(matches!(core("16E"), Err(CmdlineError::Overflow { .. })));
        assert!(matches!(
            core("mirror"),
            Err(CmdlineError::NotANumber { .. })
        ));
    }

    #[test]
    fn mirror_only_for_kernelcore() {
        assert_eq!(
            cmdline_parse_kernelcore("mirror"),
            Ok(KernelcoreSpec::Mirror)
        );
        assert!(matches!(
            cmdline_parse_kernelcore("Mirror"),
            Err(CmdlineError::NotANumber { .. })
        ));
        assert!(matches!(
            cmdline_parse_movablecore("mirror"),
            Err(CmdlineError::NotANumber {
                param: "movablecore",
                ..
            })
        ));
    }

    #[test]
    fn command_lines() {
        assert_eq!(KernelArgs::parse_cmdline(""), Ok(KernelArgs::default()));
        assert_eq!(
            KernelArgs::parse_cmdline("kernelcore=10% movablecore=1G movable_node"),
            Ok(KernelArgs {
                kernelcore: Some(KernelcoreSpec::Core(CoreSpec::Percent(10))),
                movablecore: Some(CoreSpec::Bytes(1 << 30)),
                movable_node: true,
            })
        );
        assert!(matches!(
            KernelArgs::parse_cmdline("kernelcore=1G kernelcore=2G"),
            Err(CmdlineError::Duplicate {
                param: "kernelcore",
                ..
            })
        ));
        assert!(matches!(
            KernelArgs::parse_cmdline("quiet"),
            Err(CmdlineError::UnknownParameter { word }) if word == "quiet"
        ));
    }
}
