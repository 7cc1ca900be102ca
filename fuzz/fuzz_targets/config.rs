//! Configuration loading (`config::load`, then `ServerConfig::from_flags`):
//! the YAML `--config-file` read with serde-saphyr, `METASTORE_*`
//! environment variables and command-line flags, all checked by clap, then
//! the checks clap cannot make.
//!
//! Input: `YAML bytes \0 word \0 word ...`. The YAML goes to a file the
//! target names with `--config-file`; a word `METASTORE_NAME=value` sets
//! that environment variable (injected; the process's own is not read),
//! any other word is a command-line argument. Words that name another
//! config file are dropped (the fuzzer must not read `/dev/zero`).
//!
//! Inputs with a client URL whose host is neither an IP address nor
//! `localhost` are skipped: the server resolves such hosts, and a fuzz
//! target must not send DNS queries.
//!
//! Properties: no panic; every error names its source (the file by its
//! path, the variable by its name, a flag by `--flag`).
#![no_main]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metastore::config::{ConfigError, ServerConfig, load};
use metastore_fuzz::BoundedAllocator;

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// The config file this process writes each input's YAML to.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("metastore-fuzz-config-{}.yaml", std::process::id()))
    })
}

/// Whether `text` holds a `http://host:port` whose host would be looked
/// up in DNS by `config::parse_client_url` (which splits lists at commas).
fn needs_dns(text: &str) -> bool {
    text.split("http://").skip(1).any(|after| {
        let url = after.split(',').next().unwrap_or_default();
        let authority = url.strip_suffix('/').unwrap_or(url);
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host != "localhost" && host.parse::<IpAddr>().is_err()
    })
}

/// Every string in a parsed YAML document, keys included.
fn strings(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::String(text) => found.push(text.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|item| strings(item, found)),
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                found.push(key.clone());
                strings(item, found);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|byte| *byte == 0);
    let yaml = parts.next().unwrap_or_default();
    let mut arguments = vec![OsString::from("metastore")];
    let mut environment = BTreeMap::new();
    let mut texts = Vec::new();
    for word in parts {
        let Ok(word) = std::str::from_utf8(word) else {
            continue;
        };
        if word.to_ascii_lowercase().contains("config") {
            continue;
        }
        texts.push(word.to_owned());
        match word.split_once('=') {
            Some((name, value)) if name.starts_with("METASTORE_") => {
                environment.insert(name.to_owned(), OsString::from(value));
            }
            _ => arguments.push(OsString::from(word)),
        }
    }
    if let Ok(text) = std::str::from_utf8(yaml)
        && let Ok(document) = serde_saphyr::from_str::<serde_json::Value>(text)
    {
        strings(&document, &mut texts);
    }
    if texts.iter().any(|text| needs_dns(text)) {
        return;
    }

    let path = config_path();
    std::fs::write(path, yaml).expect("write the config file");
    // (With a subcommand among the words this is a command-line error:
    // subcommands take only their command line, nothing to fuzz there.)
    arguments.insert(
        1,
        OsString::from(format!("--config-file={}", path.display())),
    );
    let environment_lookup = |name: &str| environment.get(name).cloned();
    match load(arguments, environment_lookup) {
        Ok(flags) => {
            // A typical open-file limit: the default connection cap is sized from it.
            if let Err(error) = ServerConfig::from_flags(flags, 4, 1 << 20) {
                assert!(
                    error.contains("for '--"),
                    "the error names no flag: {error}"
                );
            }
        }
        Err(ConfigError::File {
            path: named,
            message,
        }) => {
            assert_eq!(&named, path, "{message}");
        }
        Err(ConfigError::Environment { variable, message }) => {
            assert!(environment.contains_key(&variable), "{variable}: {message}");
        }
        Err(ConfigError::CommandLine(error)) => {
            let _ = error.render().to_string();
        }
    }
});
