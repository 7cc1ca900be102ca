//! Health checks and etcd's three ways of reporting them.
//!
//! - `/health`: etcd 3.4's JSON, `{"health":"true","reason":""}`, 200 or
//!   503; alarms first, then a read (linearizable unless
//!   `?serializable=true`); `?exclude=NOSPACE` ignores that alarm.
//! - `/livez`, `/readyz`: etcd 3.5's probe format: `ok` (200), or with
//!   `?verbose` one `[+]name ok` / `[-]name failed: reason` line per check
//!   then `ok`; a failure answers 503 with every line; `?exclude=name`
//!   skips a check; `/readyz/<name>` runs one check.
//!
//! Rendering is pure; running a check is in `monitor::node`.

use http::StatusCode;

/// The checks MetaStore runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every core serves a serializable read from each shard it owns, and
    /// every shard's worker answers, within the deadline.
    SerializableRead,
    /// A read that waits for every revision handed out so far to be
    /// applied (etcd's linearizable read) completes within the deadline.
    LinearizableRead,
    /// No NOSPACE alarm (the quota is not full), and the data directory's
    /// file system has room for another WAL segment.
    DiskSpace,
    /// A file can be created, written, synced and removed in the data
    /// directory.
    DataDirWritable,
    /// No CORRUPT alarm (etcd's readyz check of the same name).
    DataCorruption,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::DiskSpace => "disk_space",
            Check::DataDirWritable => "data_dir_writable",
            Check::DataCorruption => "data_corruption",
        }
    }
}

/// `/livez`: is the process worth keeping? Only whether it serves reads; a
/// full disk or quota is not fixed by a restart (etcd's livez also ignores
/// NOSPACE).
pub const LIVEZ_CHECKS: &[Check] = &[Check::SerializableRead];
/// `/readyz`: should clients be sent here?
pub const READYZ_CHECKS: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::DiskSpace,
    Check::DataDirWritable,
];

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub check: Check,
    pub result: Result<(), String>,
}

/// The checks of `group` a probe runs, minus `?exclude=` ones. Unknown
/// names in `exclude` are ignored, as etcd does (it only logs them).
pub fn selected_checks(group: &[Check], exclude: &[String]) -> Vec<Check> {
    group
        .iter()
        .copied()
        .filter(|check| !exclude.iter().any(|name| name == check.name()))
        .collect()
}

/// The check a `/livez/<name>` or `/readyz/<name>` path names.
pub fn named_check(group: &[Check], name: &str) -> Option<Check> {
    group.iter().copied().find(|check| check.name() == name)
}

/// etcd's probe response for `outcomes`.
pub fn render_probe(outcomes: &[CheckOutcome], verbose: bool) -> (StatusCode, String) {
    let mut lines = String::new();
    for outcome in outcomes {
        match &outcome.result {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", outcome.check.name())),
            Err(reason) => {
                lines.push_str(&format!("[-]{} failed: {}\n", outcome.check.name(), reason))
            }
        }
    }
    // A failure always explains itself; success is terse unless asked.
    if outcomes.iter().any(|outcome| outcome.result.is_err()) {
        return (StatusCode::SERVICE_UNAVAILABLE, lines);
    }
    if verbose {
        lines.push_str("ok\n");
        (StatusCode::OK, lines)
    } else {
        (StatusCode::OK, "ok\n".to_owned())
    }
}

/// etcd's `/health` JSON body and status.
pub fn render_health(failure: Option<String>) -> (StatusCode, String) {
    let (health, reason, status) = match failure {
        None => ("true", String::new(), StatusCode::OK),
        Some(reason) => ("false", reason, StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = serde_json::json!({ "health": health, "reason": reason }).to_string();
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(check: Check, result: Result<(), &str>) -> CheckOutcome {
        CheckOutcome {
            check,
            result: result.map_err(str::to_owned),
        }
    }

    #[test]
    fn probes_are_terse_on_success_and_explain_failures() {
        let passed = [
            outcome(Check::SerializableRead, Ok(())),
            outcome(Check::LinearizableRead, Ok(())),
        ];
        assert_eq!(
            render_probe(&passed, false),
            (StatusCode::OK, "ok\n".to_owned())
        );
        assert_eq!(
            render_probe(&passed, true),
            (
                StatusCode::OK,
                "[+]serializable_read ok\n[+]linearizable_read ok\nok\n".to_owned()
            )
        );
        let failed = [
            outcome(Check::SerializableRead, Ok(())),
            outcome(Check::DiskSpace, Err("alarm NOSPACE is raised")),
        ];
        assert_eq!(
            render_probe(&failed, false),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "[+]serializable_read ok\n[-]disk_space failed: alarm NOSPACE is raised\n"
                    .to_owned()
            )
        );
    }

    #[test]
    fn exclusions_and_names() {
        let selected = selected_checks(
            READYZ_CHECKS,
            &["linearizable_read".to_owned(), "nonsense".to_owned()],
        );
        assert!(!selected.contains(&Check::LinearizableRead));
        assert_eq!(selected.len(), READYZ_CHECKS.len() - 1);
        assert_eq!(
            named_check(READYZ_CHECKS, "disk_space"),
            Some(Check::DiskSpace)
        );
        assert_eq!(named_check(LIVEZ_CHECKS, "disk_space"), None);
    }

    #[test]
    fn health_json_matches_etcd() {
        assert_eq!(
            render_health(None),
            (
                StatusCode::OK,
                r#"{"health":"true","reason":""}"#.to_owned()
            )
        );
        let (status, body) = render_health(Some("ALARM NOSPACE".to_owned()));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, r#"{"health":"false","reason":"ALARM NOSPACE"}"#);
    }
}
