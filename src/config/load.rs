//! Where each server flag's value comes from, highest first: the command
//! line, a `METASTORE_<FLAG>` environment variable, the YAML file named by
//! `--config-file` (or `METASTORE_CONFIG_FILE`), the flag's default.
//!
//! clap stays the one parser and validator, so a value from any source gets
//! the same checks: each environment or file value is first parsed alone as
//! `--flag=value` by the full command (to name its source when it is bad),
//! then the values that apply are put before the real command line and the
//! whole is parsed once more. A layer applies only to the flags the command
//! line did not give (`ArgMatches::value_source`), so no flag is given twice.
//! Nothing here is per flag: a flag added to `Flags` is at once an
//! environment variable and a file key.
//!
//! The environment is read here, not through clap's `env` feature, because
//! clap reads the process environment itself (unit tests could not inject
//! one) and its error for a bad value names the flag, not the variable.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use super::Flags;

/// Prefix of each server flag's environment variable.
pub const ENVIRONMENT_PREFIX: &str = "METASTORE_";
/// The flag naming the file; a file cannot name another one.
const CONFIG_FILE_FLAG: &str = "config-file";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad command line, or `--help` / `--version`: clap's own error, for
    /// `clap::Error::exit` to print with clap's exit status.
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    #[error("environment variable {variable}: {message}")]
    Environment { variable: String, message: String },
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

/// `Flags`' command, with each server flag's environment variable in its help.
pub fn command() -> Command {
    Flags::command().mut_args(|arg| {
        let Some(variable) = environment_variable(&arg) else {
            return arg;
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let long_help = arg.get_long_help().map(ToString::to_string);
        let arg = arg.help(format!("{help} [env: {variable}]"));
        match long_help {
            Some(long_help) => arg.long_help(format!("{long_help}\n\n[env: {variable}]")),
            None => arg,
        }
    })
}

/// Parses `arguments` (the program name first), filling the server flags
/// they leave out from `environment` (a variable's value, if set) and then
/// from the config file. A subcommand takes only its command line.
pub fn load<Argument: Into<OsString>>(
    arguments: impl IntoIterator<Item = Argument>,
    environment: impl Fn(&str) -> Option<OsString>,
) -> Result<Flags, ConfigError> {
    let command = command();
    let arguments: Vec<OsString> = arguments.into_iter().map(Into::into).collect();
    let matches = command.clone().try_get_matches_from(&arguments)?;
    if matches.subcommand().is_some() {
        return Ok(Flags::from_arg_matches(&matches)?);
    }
    let layered = layered_arguments(&command, &matches, &environment)?;
    let program = arguments
        .first()
        .cloned()
        .unwrap_or_else(|| OsString::from(command.get_name()));
    let rest = arguments.get(1..).unwrap_or_default();
    let merged = std::iter::once(program)
        .chain(layered)
        .chain(rest.iter().cloned());
    let matches = command.try_get_matches_from(merged)?;
    Ok(Flags::from_arg_matches(&matches)?)
}

/// A flag a user sets: one with a long name, not `--help` or `--version`.
fn is_server_flag(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !arg.is_positional()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// `--max-txn-ops` → `METASTORE_MAX_TXN_OPS`.
fn environment_variable(arg: &Arg) -> Option<String> {
    let long = arg.get_long().filter(|_| is_server_flag(arg))?;
    Some(format!(
        "{ENVIRONMENT_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    ))
}

/// The `--flag=value` arguments for the server flags the command line left
/// out: from the environment where a variable is set (and not empty, as
/// etcd), else from the config file.
fn layered_arguments(
    command: &Command,
    matches: &ArgMatches,
    environment: &impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, ConfigError> {
    let unset: Vec<&Arg> = command
        .get_arguments()
        .filter(|arg| is_server_flag(arg))
        .filter(|arg| matches.value_source(arg.get_id().as_str()) != Some(ValueSource::CommandLine))
        .collect();
    let mut config_file = Flags::from_arg_matches(matches)?.config_file;
    let mut layered = Vec::new();
    let mut from_file = Vec::new();
    for arg in unset {
        let Some((variable, value)) = environment_value(arg, environment)? else {
            from_file.push(arg);
            continue;
        };
        if arg.get_long() == Some(CONFIG_FILE_FLAG) {
            config_file = Some(PathBuf::from(&value));
        }
        let arguments = flag_arguments(command, arg, std::slice::from_ref(&value))
            .map_err(|message| ConfigError::Environment { variable, message })?;
        layered.extend(arguments);
    }
    let Some(path) = config_file else {
        return Ok(layered);
    };
    let file = ConfigFile::read(&path)?;
    file.check_keys(command)?;
    for arg in from_file {
        let Some(entry) = arg.get_long().and_then(|long| file.entries.get(long)) else {
            continue;
        };
        let arguments = flag_arguments(command, arg, &entry.values)
            .map_err(|message| file.error(format!("line {}: {message}", entry.line)))?;
        layered.extend(arguments);
    }
    Ok(layered)
}

/// The flag's environment variable and its value, if set and not empty.
fn environment_value(
    arg: &Arg,
    environment: &impl Fn(&str) -> Option<OsString>,
) -> Result<Option<(String, String)>, ConfigError> {
    let Some(variable) = environment_variable(arg) else {
        return Ok(None);
    };
    let Some(value) = environment(&variable).filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    match value.into_string() {
        Ok(value) => Ok(Some((variable, value))),
        Err(_) => Err(ConfigError::Environment {
            variable,
            message: "the value is not valid UTF-8".to_owned(),
        }),
    }
}

/// Checks `values` as the command line would and returns them as arguments;
/// `Err` is why not, naming the flag, for the caller to say where it was.
/// No values (a YAML null or empty list) leave the flag unset.
fn flag_arguments(
    command: &Command,
    arg: &Arg,
    values: &[String],
) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().unwrap_or_default();
    if !arg.get_action().takes_values() {
        return switch_arguments(arg, long, values);
    }
    if values.len() > 1 && !matches!(arg.get_action(), ArgAction::Append) {
        return Err(format!("'{long}' takes one value, not a list"));
    }
    let arguments: Vec<OsString> = values
        .iter()
        .map(|value| OsString::from(format!("--{long}={value}")))
        .collect();
    for (value, argument) in values.iter().zip(&arguments) {
        let alone = [OsString::from(command.get_name()), argument.clone()];
        if let Err(error) = command.clone().try_get_matches_from(alone) {
            return Err(format!(
                "invalid value '{value}' for '{long}': {}",
                clap_reason(&error)
            ));
        }
    }
    Ok(arguments)
}

/// A flag without a value (`ArgAction::SetTrue`) is set by `true`.
fn switch_arguments(arg: &Arg, long: &str, values: &[String]) -> Result<Vec<OsString>, String> {
    if !matches!(arg.get_action(), ArgAction::SetTrue) {
        return Err(format!("'{long}' can only be given on the command line"));
    }
    match values {
        [] => Ok(Vec::new()),
        [value] if value == "true" => Ok(vec![OsString::from(format!("--{long}"))]),
        [value] if value == "false" => Ok(Vec::new()),
        _ => Err(format!(
            "invalid value '{}' for '{long}': expected true or false",
            values.join(",")
        )),
    }
}

/// What clap found wrong with a value, without its `error:` prefix, usage
/// and help hint (the caller names the source and the flag).
fn clap_reason(error: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return format!("expected one of {}", valid.join(", "));
    }
    let rendered = error.render().to_string();
    let first_line = rendered.lines().next().unwrap_or_default();
    first_line.trim_start_matches("error: ").to_owned()
}

/// A config file's values by key (a flag's long name), as flag text.
struct ConfigFile {
    path: PathBuf,
    entries: BTreeMap<String, FileEntry>,
}

struct FileEntry {
    /// Where the value is, for messages.
    line: u64,
    /// One for a scalar; a list's items; none for null or `[]`.
    values: Vec<String>,
}

type YamlValue = serde_saphyr::Spanned<serde_json::Value>;

impl ConfigFile {
    /// Reads a YAML mapping of flag names to scalars or lists of scalars.
    /// serde-saphyr rejects duplicate keys and bounds the work a document can
    /// cause (aliases, depth); an empty file is an empty mapping.
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| file_error(format!("cannot read it: {error}")))?;
        // `Option`: a document with nothing in it (`---`) is empty, as an empty file.
        let document: Option<BTreeMap<String, YamlValue>> =
            serde_saphyr::from_str(&text).map_err(|error| {
                let options = serde_saphyr::render_options! {
                    formatter: &serde_saphyr::UserMessageFormatter,
                    snippets: serde_saphyr::SnippetMode::Off,
                };
                let message = error.render_with_options(options);
                file_error(format!("not a YAML mapping of flags to values: {message}"))
            })?;
        let mut entries = BTreeMap::new();
        for (key, value) in document.unwrap_or_default() {
            let line = value.referenced.line();
            let values = flag_texts(value.value)
                .map_err(|why| file_error(format!("line {line}: '{key}': {why}")))?;
            entries.insert(key, FileEntry { line, values });
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    /// Every key must be a server flag's long name; `config-file` is not one.
    fn check_keys(&self, command: &Command) -> Result<(), ConfigError> {
        let is_key = |key: &str| {
            key != CONFIG_FILE_FLAG
                && command
                    .get_arguments()
                    .any(|arg| is_server_flag(arg) && arg.get_long() == Some(key))
        };
        let mut unknown: Vec<(u64, &str)> = self
            .entries
            .iter()
            .filter(|(key, _)| !is_key(key))
            .map(|(key, entry)| (entry.line, key.as_str()))
            .collect();
        unknown.sort_unstable();
        let unknown: Vec<String> = unknown
            .into_iter()
            .map(|(line, key)| format!("'{key}' (line {line})"))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(self.error(format!(
            "unknown key {}: keys are the server flags' long names (`metastore --help` lists them)",
            unknown.join(", ")
        )))
    }

    fn error(&self, message: String) -> ConfigError {
        ConfigError::File {
            path: self.path.clone(),
            message,
        }
    }
}

/// A file value as flag text: numbers and booleans as written, a list item
/// by item. Mappings and nested lists are not flag values.
fn flag_texts(value: serde_json::Value) -> Result<Vec<String>, &'static str> {
    const EXPECTED: &str = "expected a value or a list of values";
    match value {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| scalar_text(item).ok_or(EXPECTED))
            .collect(),
        scalar => scalar_text(scalar).map(|text| vec![text]).ok_or(EXPECTED),
    }
}

fn scalar_text(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Bool(value) => Some(value.to_string()),
        serde_json::Value::Number(value) => Some(value.to_string()),
        serde_json::Value::String(value) => Some(value),
        serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_TXN_OPS;
    use clap::Parser;
    use std::collections::HashMap;

    /// An injected environment, so tests never touch the process's.
    fn environment(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let variables: HashMap<String, OsString> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), OsString::from(value)))
            .collect();
        move |name| variables.get(name).cloned()
    }

    /// A config file holding `yaml`; the directory lives as long as the path.
    fn config_file(yaml: &str) -> (tempfile::TempDir, String) {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("metastore.yaml");
        std::fs::write(&path, yaml).expect("write config file");
        let path = path.to_str().expect("utf-8 path").to_owned();
        (directory, path)
    }

    fn load_with(
        yaml: &str,
        variables: &[(&str, &str)],
        flags: &[&str],
    ) -> (Result<Flags, ConfigError>, String) {
        let (_directory, path) = config_file(yaml);
        let mut arguments = vec!["metastore", "--config-file", path.as_str()];
        arguments.extend_from_slice(flags);
        (load(arguments, environment(variables)), path)
    }

    fn max_txn_ops(yaml: &str, variables: &[(&str, &str)], flags: &[&str]) -> u32 {
        load_with(yaml, variables, flags)
            .0
            .expect("loads")
            .max_txn_ops
    }

    fn error_text(yaml: &str, variables: &[(&str, &str)]) -> (String, String) {
        let (result, path) = load_with(yaml, variables, &[]);
        (result.expect_err("must fail").to_string(), path)
    }

    #[test]
    fn file_below_environment_below_flags() {
        let file = "max-txn-ops: 10\n";
        let variable = [("METASTORE_MAX_TXN_OPS", "20")];
        let flag = ["--max-txn-ops", "30"];
        assert_eq!(max_txn_ops("", &[], &[]), DEFAULT_MAX_TXN_OPS);
        assert_eq!(max_txn_ops(file, &[], &[]), 10);
        assert_eq!(max_txn_ops(file, &variable, &[]), 20);
        assert_eq!(max_txn_ops(file, &[], &flag), 30);
        assert_eq!(max_txn_ops("", &variable, &flag), 30);
        assert_eq!(max_txn_ops(file, &variable, &flag), 30);
        // etcd ignores an empty variable; so do we.
        assert_eq!(max_txn_ops(file, &[("METASTORE_MAX_TXN_OPS", "")], &[]), 10);
    }

    #[test]
    fn environment_alone_and_config_file_from_environment() {
        let flags = load(
            ["metastore"],
            environment(&[("METASTORE_NAME", "env-name")]),
        )
        .expect("loads");
        assert_eq!(flags.name, "env-name");
        let (_directory, path) = config_file("name: file-name\nshards: 3\n");
        let variables = [
            ("METASTORE_CONFIG_FILE", path.as_str()),
            ("METASTORE_SHARDS", "5"),
        ];
        let flags = load(["metastore"], environment(&variables)).expect("loads");
        assert_eq!((flags.name.as_str(), flags.shards), ("file-name", Some(5)));
    }

    #[test]
    fn unknown_keys_are_errors_naming_key_and_file() {
        let (error, path) = error_text("name: a\ndata-dri: /tmp/x\n", &[]);
        assert!(error.contains(&path), "{error}");
        assert!(error.contains("'data-dri' (line 2)"), "{error}");
        // The file cannot name a file, nor set the subcommand's arguments.
        for key in ["config-file: other.yaml", "file: snapshot.db", "help: true"] {
            let (error, _) = error_text(key, &[]);
            assert!(error.contains("unknown key"), "{key}: {error}");
        }
    }

    #[test]
    fn bad_file_value_names_file_line_and_key() {
        let (error, path) = error_text("name: a\nmax-txn-ops: 0\n", &[]);
        assert!(
            error.starts_with(&format!("config file {path}: line 2:")),
            "{error}"
        );
        assert!(
            error.contains("invalid value '0' for 'max-txn-ops'"),
            "{error}"
        );
        let (error, _) = error_text("log-level: loud\n", &[]);
        assert!(
            error.contains("'log-level'") && error.contains("debug, info"),
            "{error}"
        );
        let (error, _) = error_text("name: [a, b]\n", &[]);
        assert!(error.contains("'name' takes one value"), "{error}");
        let (error, _) = error_text("name: {first: a}\n", &[]);
        assert!(
            error.contains("'name'") && error.contains("line 1"),
            "{error}"
        );
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        let variables = [("METASTORE_LISTEN_CLIENT_URLS", "localhost:2379")];
        let error = load(["metastore"], environment(&variables))
            .expect_err("must fail")
            .to_string();
        assert!(
            error.starts_with("environment variable METASTORE_LISTEN_CLIENT_URLS: "),
            "{error}"
        );
        assert!(error.contains("'listen-client-urls'"), "{error}");
    }

    #[test]
    fn unreadable_malformed_and_non_mapping_files_name_the_file() {
        let error = load(
            ["metastore", "--config-file", "/nonexistent/metastore.yaml"],
            environment(&[]),
        )
        .expect_err("must fail")
        .to_string();
        assert!(
            error.contains("/nonexistent/metastore.yaml: cannot read it"),
            "{error}"
        );
        for yaml in [
            "name: [unclosed\n",
            "- a list\n",
            "just text\n",
            "name: a\nname: b\n",
        ] {
            let (error, path) = error_text(yaml, &[]);
            assert!(
                error.starts_with(&format!("config file {path}: ")),
                "{yaml:?}: {error}"
            );
        }
    }

    #[test]
    fn list_values_as_yaml_lists_or_comma_separated() {
        let expected = ["http://127.0.0.1:2479", "http://127.0.0.1:2579"];
        for yaml in [
            "listen-client-urls: [http://127.0.0.1:2479, http://127.0.0.1:2579]\n",
            "listen-client-urls: http://127.0.0.1:2479,http://127.0.0.1:2579\n",
            "listen-client-urls:\n  - http://127.0.0.1:2479,http://127.0.0.1:2579\n",
        ] {
            let flags = load_with(yaml, &[], &[]).0.expect("loads");
            let urls: Vec<&str> = flags
                .listen_client_urls
                .iter()
                .map(|url| url.url.as_str())
                .collect();
            assert_eq!(urls, expected, "{yaml}");
        }
        let (error, _) = error_text("listen-client-urls: [http://127.0.0.1:2479, nope]\n", &[]);
        assert!(error.contains("invalid value 'nope'"), "{error}");
    }

    #[test]
    fn null_and_empty_list_leave_the_default() {
        let flags = load_with("cores:\nmethod-rate-limits: []\n", &[], &[])
            .0
            .expect("loads");
        assert_eq!((flags.cores, flags.method_rate_limits.len()), (None, 0));
    }

    #[test]
    fn subcommands_take_only_their_command_line() {
        let variables = [
            ("METASTORE_MAX_TXN_OPS", "0"),
            ("METASTORE_CONFIG_FILE", "/nonexistent"),
        ];
        let arguments = [
            "metastore",
            "snapshot",
            "restore",
            "s.db",
            "--data-dir",
            "d",
        ];
        let flags = load(arguments, environment(&variables)).expect("loads");
        assert!(flags.command.is_some());
    }

    #[test]
    fn switches_are_set_by_true() {
        let command = Command::new("test").arg(
            Arg::new("verbose")
                .long("verbose")
                .action(ArgAction::SetTrue),
        );
        let arg = command.get_arguments().next().expect("one argument");
        let to_text = |values: &[&str]| {
            let values: Vec<String> = values.iter().map(ToString::to_string).collect();
            flag_arguments(&command, arg, &values)
        };
        assert_eq!(to_text(&["true"]), Ok(vec![OsString::from("--verbose")]));
        assert_eq!(to_text(&["false"]), Ok(Vec::new()));
        assert!(to_text(&["yes"]).is_err());
    }

    #[test]
    fn help_shows_each_environment_variable() {
        let help = command().render_long_help().to_string();
        for arg in command().get_arguments().filter(|arg| is_server_flag(arg)) {
            let variable = environment_variable(arg).expect("server flag");
            assert!(help.contains(&variable), "--help lacks {variable}");
        }
        assert!(help.contains("METASTORE_MAX_TXN_OPS"));
    }

    /// The example file documents every server flag, and loading it changes
    /// nothing: a flag added without documentation fails here.
    #[test]
    fn example_file_has_every_flag_at_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metastore.example.yaml");
        let file = ConfigFile::read(Path::new(path)).expect("example parses");
        for arg in command().get_arguments().filter(|arg| is_server_flag(arg)) {
            let long = arg.get_long().unwrap_or_default();
            if long != CONFIG_FILE_FLAG {
                assert!(file.entries.contains_key(long), "example lacks '{long}'");
            }
        }
        let mut loaded =
            load(["metastore", "--config-file", path], environment(&[])).expect("loads");
        loaded.config_file = None;
        let defaults = Flags::try_parse_from(["metastore"]).expect("defaults");
        assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"));
    }
}
