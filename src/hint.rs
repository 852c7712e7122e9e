//! What a message tells its reader to do: an option to set, a command to run. The library
//! writes each message once and names options as its own structs do (`skip_bad`,
//! `validation = none`); each front end spells them as its users type them (`--skip-bad`,
//! `skip_bad=True`) by installing a [`Spelling`] once, before any message is shown. Without
//! one, options read as the library names them.
//!
//! A process-wide setting rather than a parameter: errors are shown through `Display`, which
//! takes no context, and a process has one front end.

use std::fmt;
use std::sync::OnceLock;

/// A value given to an option in a hint.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A value the reader types as is.
    Given(String),
    /// A stand-in the hint explains (`DIR`, `MODEL`).
    Placeholder(&'static str),
    /// A switch turned on.
    On,
}

/// How a front end writes options and commands.
pub trait Spelling: Send + Sync {
    /// An option by the library's name, with its value; `None`: the option named, as a
    /// sentence about it names it.
    fn option(&self, name: &str, value: Option<&Value>) -> String;

    /// A command of the library's (`extract`) with its options in order.
    fn command(&self, command: &Command) -> String;

    /// Options that stand alone in a sentence (where a dataset came from).
    fn options(&self, options: &[(&'static str, Option<Value>)]) -> String {
        let each: Vec<String> = (options.iter())
            .map(|(name, value)| self.option(name, value.as_ref()))
            .collect();
        each.join(", ")
    }
}

/// One of the library's commands with the options to give it, as a hint shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// As the library's runner names it: `extract`, `fit`, `run`.
    pub name: &'static str,
    pub options: Vec<(&'static str, Option<Value>)>,
}

impl Command {
    pub fn new(name: &'static str) -> Self {
        Command {
            name,
            options: Vec::new(),
        }
    }

    /// With an option given a value.
    pub fn given(mut self, option: &'static str, value: impl ToString) -> Self {
        let value = Value::Given(value.to_string());
        self.options.push((option, Some(value)));
        self
    }

    /// With an option whose value the reader fills in.
    pub fn placeholder(mut self, option: &'static str, stand_in: &'static str) -> Self {
        (self.options).push((option, Some(Value::Placeholder(stand_in))));
        self
    }

    /// With a switch set.
    pub fn switch(mut self, option: &'static str) -> Self {
        self.options.push((option, Some(Value::On)));
        self
    }

    /// With options in order.
    pub fn with(mut self, options: Vec<(&'static str, Option<Value>)>) -> Self {
        self.options.extend(options);
        self
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&spelling().command(self))
    }
}

static SPELLING: OnceLock<Box<dyn Spelling>> = OnceLock::new();

/// Makes `spelling` the process's; false (and nothing changes) when one was installed already.
pub fn install(spelling: Box<dyn Spelling>) -> bool {
    SPELLING.set(spelling).is_ok()
}

fn spelling() -> &'static dyn Spelling {
    SPELLING.get().map_or(&LibraryNames, |s| s.as_ref())
}

/// An option as the front end spells it: `opt("skip_bad")` reads `--skip-bad` on the command
/// line.
pub fn opt(name: &str) -> String {
    spelling().option(name, None)
}

/// A switch turned on: `switch("skip_bad")` reads `--skip-bad` on the command line and
/// `skip_bad=True` from Python.
pub fn switch(name: &str) -> String {
    spelling().option(name, Some(&Value::On))
}

/// An option set to a value: `opt_value("validation", "none")` reads `--validation none`.
pub fn opt_value(name: &str, value: impl ToString) -> String {
    spelling().option(name, Some(&Value::Given(value.to_string())))
}

/// An option whose value the reader fills in: `opt_placeholder("manifest", "FILE")`.
pub fn opt_placeholder(name: &str, stand_in: &'static str) -> String {
    spelling().option(name, Some(&Value::Placeholder(stand_in)))
}

/// Options that stand alone in a sentence.
pub fn options(options: &[(&'static str, Option<Value>)]) -> String {
    spelling().options(options)
}

/// The default: options named as the library's structs name them.
struct LibraryNames;

impl Spelling for LibraryNames {
    fn option(&self, name: &str, value: Option<&Value>) -> String {
        match value {
            None | Some(Value::On) => format!("`{name}`"),
            Some(v) => format!("`{name}` = {}", v.text()),
        }
    }

    fn command(&self, command: &Command) -> String {
        match command.options.is_empty() {
            true => format!("`{}`", command.name),
            false => format!("`{}` with {}", command.name, self.options(&command.options)),
        }
    }
}

impl Value {
    /// The value as text, a stand-in as its name.
    pub fn text(&self) -> &str {
        match self {
            Value::Given(s) => s,
            Value::Placeholder(p) => p,
            Value::On => "on",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names_without_an_installed_spelling() {
        // Unit tests install no spelling.
        assert_eq!(opt("skip_bad"), "`skip_bad`");
        assert_eq!(opt_value("validation", "none"), "`validation` = none");
        let c = Command::new("extract")
            .given("model", "m")
            .placeholder("root", "DIR");
        assert_eq!(c.to_string(), "`extract` with `model` = m, `root` = DIR");
        assert_eq!(Command::new("extract").to_string(), "`extract`");
    }
}
