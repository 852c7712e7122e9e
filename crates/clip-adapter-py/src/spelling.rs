//! The library's hints in Python's words: options as keyword arguments (`skip_bad=True`),
//! commands as calls of this package (`clip_adapter.extract(...)`), a dataset's source as the
//! `Dataset` constructor that reads it.

use clip_adapter::hint::{self, Command, Spelling, Value};

/// The package's function for a command of the library's, where the names differ.
const FUNCTIONS: [(&str, &str); 1] = [("fit", "fit_cached")];

/// The options that say where a dataset's images are, in the `Dataset` constructors' terms:
/// (option, constructor, whether it is the constructor's first argument).
const SOURCE: [(&str, &str, bool); 8] = [
    ("dataset", "benchmark", true),
    ("folder", "folder", true),
    ("manifest", "manifest", true),
    ("split", "split_file", true),
    ("root", "", false),
    ("split_seed", "", false),
    ("train_fraction", "", false),
    ("val_fraction", "", false),
];

struct Keywords;

impl Spelling for Keywords {
    fn option(&self, name: &str, value: Option<&Value>) -> String {
        match value {
            None => format!("`{name}`"),
            Some(v) => format!("{name}={}", literal(v)),
        }
    }

    fn command(&self, command: &Command) -> String {
        let name =
            (FUNCTIONS.iter().find(|(c, _)| *c == command.name)).map_or(command.name, |f| f.1);
        let is_source = |n: &str| SOURCE.iter().any(|(s, ..)| *s == n);
        let (source, rest): (Vec<_>, Vec<_>) =
            (command.options.iter().cloned()).partition(|(n, _)| is_source(n));
        let mut args: Vec<String> = (rest.iter())
            .map(|(n, v)| self.option(n, v.as_ref()))
            .collect();
        if !source.is_empty() {
            args.insert(
                1.min(args.len()),
                format!("dataset={}", self.options(&source)),
            );
        }
        format!("`clip_adapter.{name}({})`", args.join(", "))
    }

    /// A source as the `Dataset` constructor that reads it: `Dataset.benchmark('eurosat', DIR)`.
    fn options(&self, options: &[(&'static str, Option<Value>)]) -> String {
        let mut constructor = "split_file";
        let (mut first, mut keywords) = (Vec::new(), Vec::new());
        for (name, value) in options {
            let value = value.as_ref().map_or("True".to_string(), literal);
            match SOURCE.iter().find(|(s, ..)| s == name) {
                Some((_, c, true)) => {
                    // A benchmark with a split file: the split is a keyword of `benchmark`.
                    if !first.is_empty() {
                        keywords.push(format!("{name}={value}"));
                        continue;
                    }
                    constructor = c;
                    first.push(value);
                }
                // A benchmark's root is its second positional argument.
                _ if *name == "root" && constructor == "benchmark" => first.push(value),
                _ => keywords.push(format!("{name}={value}")),
            }
        }
        let args: Vec<String> = first.into_iter().chain(keywords).collect();
        format!("Dataset.{constructor}({})", args.join(", "))
    }
}

/// A value as Python source: numbers and stand-ins as they are, text as a string literal.
fn literal(v: &Value) -> String {
    match v {
        Value::Placeholder(p) => p.to_string(),
        Value::On => "True".to_string(),
        Value::Given(s) if s.parse::<f64>().is_ok() => s.clone(),
        Value::Given(s) => format!("{s:?}"),
    }
}

/// Makes the library's messages name keyword arguments; called when the module loads.
pub fn install() {
    hint::install(Box::new(Keywords));
}
