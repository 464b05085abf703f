//! The policy's text form for the CLI: `FromStr` and `Display` for [`PlacementPolicy`].
//!
//! The format is documented on [`PlacementPolicy`] (section "Text form").

use std::fmt;
use std::str::FromStr;

use super::{PlacementError, PlacementPolicy, RegionPolicy};

/// Why a policy text was refused. Lines are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParsePolicyError {
    /// A statement starts with something other than `regions=`, `prefix` or `none`.
    #[error("line {line}: {statement:?} is not `regions=…`, `prefix PREFIX=REGION` or `none`")]
    UnknownStatement {
        /// Line of the statement.
        line: usize,
        /// The statement, trimmed.
        statement: String,
    },
    /// A statement has the right keyword but the wrong shape.
    #[error("line {line}: {statement:?}: {reason}")]
    Malformed {
        /// Line of the statement.
        line: usize,
        /// The statement, trimmed.
        statement: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `regions=` appears a second time.
    #[error("line {line}: `regions=` was already given")]
    RegionsTwice {
        /// Line of the second `regions=`.
        line: usize,
    },
    /// `none` appears together with other statements.
    #[error("`none` cannot be combined with other statements")]
    NoneWithOthers,
    /// The statements parse but describe an invalid policy.
    #[error("invalid placement policy: {0}")]
    Invalid(#[from] PlacementError),
}

impl FromStr for PlacementPolicy {
    type Err = ParsePolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parser = Parser::default();
        for (i, line) in text.lines().enumerate() {
            let code = line.split_once('#').map_or(line, |(code, _comment)| code);
            for statement in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                parser.statement(i + 1, statement)?;
            }
        }
        if parser.saw_none && (parser.regions_line.is_some() || !parser.policy.prefixes.is_empty())
        {
            return Err(ParsePolicyError::NoneWithOthers);
        }
        parser.policy.validate_names()?;
        Ok(parser.policy)
    }
}

#[derive(Default)]
struct Parser {
    policy: PlacementPolicy,
    regions_line: Option<usize>,
    saw_none: bool,
}

impl Parser {
    fn statement(&mut self, line: usize, statement: &str) -> Result<(), ParsePolicyError> {
        let malformed = |reason| ParsePolicyError::Malformed {
            line,
            statement: statement.to_owned(),
            reason,
        };
        if statement == "none" {
            self.saw_none = true;
        } else if let Some(list) = keyword(statement, "regions").and_then(|r| r.strip_prefix('=')) {
            if self.regions_line.is_some() {
                return Err(ParsePolicyError::RegionsTwice { line });
            }
            self.regions_line = Some(line);
            for entry in list.split(',').map(str::trim) {
                if entry.is_empty() {
                    return Err(malformed("empty entry in the region list"));
                }
                let mut names = entry.split('>').map(str::trim);
                let name = names.next().unwrap_or_default();
                let fallbacks: Vec<&str> = names.collect();
                if name.is_empty() || fallbacks.iter().any(|f| f.is_empty()) {
                    return Err(malformed("empty region name around `>`"));
                }
                self.policy.regions.push(RegionPolicy::new(name, fallbacks));
            }
        } else if let Some(rest) = keyword(statement, "prefix") {
            let (prefix, region) = rest
                .rsplit_once('=')
                .ok_or_else(|| malformed("expected `prefix PREFIX=REGION`"))?;
            let region = region.trim();
            if region.is_empty() {
                return Err(malformed("missing region after `=`"));
            }
            self.policy
                .prefixes
                .push((prefix.trim().to_owned(), region.to_owned()));
        } else {
            return Err(ParsePolicyError::UnknownStatement {
                line,
                statement: statement.to_owned(),
            });
        }
        Ok(())
    }
}

/// The rest of `statement` after the whole word `word` and any whitespace, or `None`.
fn keyword<'s>(statement: &'s str, word: &str) -> Option<&'s str> {
    let rest = statement.strip_prefix(word)?;
    let trimmed = rest.trim_start();
    (trimmed.len() < rest.len() || trimmed.starts_with('=')).then_some(trimmed)
}

impl fmt::Display for PlacementPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.regions.is_empty() && self.prefixes.is_empty() {
            return f.write_str("none");
        }
        let mut separator = "";
        if !self.regions.is_empty() {
            f.write_str("regions=")?;
            for (i, region) in self.regions.iter().enumerate() {
                f.write_str(if i == 0 { "" } else { "," })?;
                f.write_str(&region.name)?;
                for fallback in &region.fallbacks {
                    write!(f, ">{fallback}")?;
                }
            }
            separator = "; ";
        }
        for (prefix, region) in &self.prefixes {
            write!(f, "{separator}prefix {prefix}={region}")?;
            separator = "; ";
        }
        Ok(())
    }
}
