//! Where a setting came from, and the one place its value is checked: every check's message
//! names the origin (the flag the user typed, or the preset file, line and key).

use crate::{Error, Result};
use std::fmt::Display;
use std::path::PathBuf;

/// The source of one value.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// A command-line flag, e.g. `--decay`.
    Flag(&'static str),
    /// A preset file's key (dotted: `regularize.decay`) on a line.
    Preset { path: PathBuf, line: usize, key: String },
    /// The built-in default of a setting.
    Default(&'static str),
}

impl Origin {
    /// The error for a bad value from this origin: `--decay: must be in [0, 1), got 2`, or
    /// `preset p.toml: line 5, key `regularize.decay`: must be ...`.
    pub fn error(&self, problem: impl Display) -> Error {
        match self {
            Origin::Flag(flag) => Error::Usage(format!("{flag}: {problem}")),
            Origin::Preset { path, line, key } => {
                Error::Preset { path: path.clone(), reason: format!("line {line}, key `{key}`: {problem}") }
            }
            Origin::Default(key) => Error::internal(format!("the default {key} is invalid: {problem}")),
        }
    }

    /// Re-attributes a user error raised while interpreting this origin's value (an unknown
    /// class, a bad layer spec) to the origin; other errors pass through.
    pub fn blame(&self, e: Error) -> Error {
        match e {
            Error::Usage(problem) => self.error(problem),
            Error::Image { path, reason } => self.error(format!("cannot read image {}: {reason}", path.display())),
            e => e,
        }
    }
}

/// A value together with where it came from.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

/// A numeric setting's allowed values.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// Any finite number.
    Finite,
    /// Finite and > 0.
    Positive,
    /// lo <= v <= hi.
    Between(f64, f64),
    /// lo <= v < hi.
    From(f64, f64),
    /// 0 (off), or lo <= v <= hi.
    OffOrBetween(f64, f64),
}

impl Rule {
    /// What is wrong with `v`, if anything.
    pub fn problem(self, v: f64) -> Option<String> {
        let ok = v.is_finite()
            && match self {
                Rule::Finite => true,
                Rule::Positive => v > 0.0,
                Rule::Between(lo, hi) => lo <= v && v <= hi,
                Rule::From(lo, hi) => lo <= v && v < hi,
                Rule::OffOrBetween(lo, hi) => v == 0.0 || (lo <= v && v <= hi),
            };
        if ok {
            return None;
        }
        let want = match self {
            Rule::Finite => "a finite number".to_owned(),
            Rule::Positive => "positive".to_owned(),
            Rule::Between(lo, hi) if hi == f64::MAX => format!("at least {lo}"),
            Rule::Between(lo, hi) => format!("between {lo} and {hi}"),
            Rule::From(lo, hi) => format!("in [{lo}, {hi})"),
            Rule::OffOrBetween(lo, hi) => format!("0 (off) or between {lo} and {hi}"),
        };
        Some(format!("must be {want}, got {}", crate::error::number(v)))
    }

    pub fn at_least(lo: f64) -> Rule {
        Rule::Between(lo, f64::MAX)
    }
}

/// Numbers a [`Rule`] can judge.
pub trait Number: Copy + Display {
    fn as_f64(self) -> f64;
}

macro_rules! number {
    ($($t:ty),*) => { $(impl Number for $t { fn as_f64(self) -> f64 { self as f64 } })* };
}
number!(usize, u32, u64, f32, f64);

impl<T: Number> Sourced<T> {
    /// The value, or the error naming its origin when `rule` rejects it.
    pub fn check(self, rule: Rule) -> Result<T> {
        match rule.problem(self.value.as_f64()) {
            None => Ok(self.value),
            Some(p) => Err(self.origin.error(p)),
        }
    }
}

impl<T> Sourced<T> {
    /// A value the user gave with the flag `name`.
    pub fn flag(name: &'static str, value: T) -> Self {
        Sourced { value, origin: Origin::Flag(name) }
    }

    /// The same origin for a converted value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Sourced<U> {
        Sourced { value: f(self.value), origin: self.origin }
    }

    /// Interprets the value; a failure is reported against its origin.
    pub fn parse<U>(&self, f: impl FnOnce(&T) -> std::result::Result<U, String>) -> Result<U> {
        f(&self.value).map_err(|p| self.origin.error(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_reject_nan_and_name_the_range() {
        assert_eq!(Rule::From(0.0, 1.0).problem(f64::NAN).unwrap(), "must be in [0, 1), got NaN");
        assert_eq!(Rule::at_least(1.0).problem(0.0).unwrap(), "must be at least 1, got 0");
        assert!(Rule::Positive.problem(f64::INFINITY).is_some());
        assert!(Rule::Between(0.0, 20.0).problem(20.0).is_none());
    }

    #[test]
    fn errors_name_their_origin() {
        let flag = Origin::Flag("--decay").error("must be in [0, 1), got 2");
        assert_eq!(flag.to_string(), "--decay: must be in [0, 1), got 2");
        let preset = Origin::Preset { path: "p.toml".into(), line: 4, key: "regularize.decay".into() };
        assert_eq!(preset.error("bad").to_string(), "preset p.toml: line 4, key `regularize.decay`: bad");
    }
}
