//! Errors as the command line says them: the library's messages name options and commands
//! through its `hint` module, which this spelling turns into flags and command lines to type.

use std::error::Error;

use clip_adapter::hint::{self, Command, Spelling, Value};

/// Options whose flag is not their library name.
const FLAGS: [(&str, &str); 1] = [("overwrite", "force")];

struct Flags;

impl Spelling for Flags {
    fn option(&self, name: &str, value: Option<&Value>) -> String {
        let name = (FLAGS.iter().find(|(n, _)| *n == name)).map_or(name, |(_, flag)| flag);
        let flag = format!("--{}", name.replace('_', "-"));
        match value {
            None | Some(Value::On) => flag,
            Some(Value::Given(v)) => format!("{flag} {}", shell_quote(v)),
            Some(Value::Placeholder(p)) => format!("{flag} {p}"),
        }
    }

    fn command(&self, command: &Command) -> String {
        let options =
            (command.options.iter()).map(|(n, v)| format!(" {}", self.option(n, v.as_ref())));
        format!(
            "`clip-adapter {}{}`",
            command.name,
            options.collect::<String>()
        )
    }

    fn options(&self, options: &[(&'static str, Option<Value>)]) -> String {
        let each: Vec<String> = (options.iter())
            .map(|(n, v)| self.option(n, v.as_ref()))
            .collect();
        format!("`{}`", each.join(" "))
    }
}

/// Makes the library's messages name flags; called once, first thing.
pub fn install() {
    hint::install(Box::new(Flags));
}

/// `s` as one POSIX shell word.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    match plain {
        true => s.to_string(),
        false => format!("'{}'", s.replace('\'', "'\\''")),
    }
}

/// The error and its causes on one line, each said once: several library errors name their
/// cause in their own message (so that they read whole when printed alone) and also return it
/// as their source, which `{:#}` would print a second time.
pub fn error_chain(err: &anyhow::Error) -> String {
    join(err.chain())
}

/// The same for a library error and its sources.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut causes = vec![err];
    while let Some(cause) = causes[causes.len() - 1].source() {
        causes.push(cause);
    }
    join(causes.into_iter())
}

fn join<'a>(causes: impl Iterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut out = String::new();
    for cause in causes {
        let msg = cause.to_string();
        if msg.is_empty() || out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}
