//! A name that is not one of those a setting takes (a template set, an adapter branch, a
//! split): what was given and what is expected, for the caller to show or act on.

/// `what` named `given`, which is none of `expected`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{given}`; expected one of: {}", expected.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub expected: Vec<&'static str>,
}

impl UnknownName {
    pub fn new(what: &'static str, given: &str, expected: &[&'static str]) -> Self {
        let (given, expected) = (given.to_string(), expected.to_vec());
        UnknownName {
            what,
            given,
            expected,
        }
    }
}
