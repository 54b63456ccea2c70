//! Runs Argo CD resource health scripts (Lua) the way Argo CD does, so Ferrite's scripts in
//! `charts/ferrite/argocd/` are tested against real objects without an Argo CD.
//!
//! What Argo CD does, and this module copies (Argo CD `util/lua`, gopher-lua):
//! - the object is the global `obj`: JSON objects become tables keyed by field name, arrays
//!   plain sequences (1-based, no metatable), `null` is `nil`;
//! - scripts from `argocd-cm` run with the base, `table` and a cut-down `os` (`time`, `date`)
//!   library only: no `string`, no `math`, no `io` — a script that calls `string.format`
//!   fails here as it fails there;
//! - the chunk's last return value must be a table; its `status` must be one of
//!   [`HealthStatus`], otherwise the health is `Unknown` with Argo CD's own message
//!   ([`INVALID_STATUS_MESSAGE`]); `status` and `message` that are not strings are errors;
//! - a script gets one second.
//!
//! NB: Argo CD embeds gopher-lua (Lua 5.1), this runs Lua 5.4. Scripts must stick to the
//! common subset (no `goto`, no `//`, no integer/float distinctions in messages); integers
//! from the apiserver stay integers here, so `tostring(3)` is `"3"` in both.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Value, VmState};

/// What Argo CD reports when a script returns a status it does not know.
pub const INVALID_STATUS_MESSAGE: &str = "Lua returned an invalid health status";
/// How long Argo CD lets a health script run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Where the chart ships Ferrite's health scripts, relative to the repository root.
pub const SCRIPT_DIR: &str = "charts/ferrite/argocd";
/// Where the objects the scripts are tested against live, relative to the repository root.
pub const TESTDATA_DIR: &str = "e2e/testdata/argo";

/// Argo CD's health states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Working as declared.
    Healthy,
    /// Not yet working as declared, but getting there.
    Progressing,
    /// Failed, or cannot get there without help.
    Degraded,
    /// Paused on purpose, waiting for an external event.
    Suspended,
    /// Absent from the cluster.
    Missing,
    /// The health cannot be told.
    Unknown,
}

impl HealthStatus {
    /// Every state, in Argo CD's order from best to worst.
    pub const ALL: [Self; 6] = [
        Self::Healthy,
        Self::Suspended,
        Self::Progressing,
        Self::Missing,
        Self::Degraded,
        Self::Unknown,
    ];

    /// The name Argo CD uses (and a script returns).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "Healthy",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::Suspended => "Suspended",
            Self::Missing => "Missing",
            Self::Unknown => "Unknown",
        }
    }

    /// The state named `name`, if Argo CD knows it (the names are case-sensitive).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health a script assigned to an object, as Argo CD shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The state.
    pub status: HealthStatus,
    /// The explanation shown next to it (may be empty).
    pub message: String,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.status, self.message)
    }
}

/// What went wrong reading or running a health script.
// NB: mlua's errors are neither Send nor Sync (the `error-send` feature is off), so the Lua
// error is kept as its rendered text (which carries Lua's own position and traceback) rather
// than as a `source`: anyhow, and every test here, need Send + Sync.
#[derive(Debug)]
pub enum Error {
    /// A script or fixture file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A fixture is not valid JSON.
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The object could not be handed to Lua as `obj`.
    Object {
        /// The script it was meant for.
        script: String,
        /// Lua's error.
        lua_error: String,
    },
    /// The script does not compile or raised an error.
    Script {
        /// The script.
        script: String,
        /// Lua's error, with position and traceback.
        lua_error: String,
    },
    /// The script ran past [`SCRIPT_TIMEOUT`] and Argo CD would have stopped it.
    Timeout {
        /// The script.
        script: String,
    },
    /// The script's last return value is not a table (Argo CD: "expect table output").
    NotATable {
        /// The script.
        script: String,
        /// The Lua type it returned instead.
        found: &'static str,
    },
    /// The script returned an empty table or a sequence, which Argo CD reads as a JSON
    /// array and refuses.
    NotARecord {
        /// The script.
        script: String,
    },
    /// `status` or `message` of the returned table is not a string.
    BadField {
        /// The script.
        script: String,
        /// The field.
        field: &'static str,
        /// The Lua type it holds.
        found: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::Parse { path, source } => write!(
                f,
                "{} is not a JSON object as `kubectl get -o json` prints it: {source}",
                path.display()
            ),
            Self::Object { script, lua_error } => {
                write!(
                    f,
                    "cannot hand the object to {script} as `obj`: {lua_error}"
                )
            }
            Self::Script { script, lua_error } => write!(f, "{script} failed: {lua_error}"),
            Self::Timeout { script } => write!(
                f,
                "{script} ran longer than {SCRIPT_TIMEOUT:?}: Argo CD stops it there; look for a loop that never ends"
            ),
            Self::NotATable { script, found } => write!(
                f,
                "{script} returned a {found}: a health script must end with `return {{status = ..., message = ...}}`"
            ),
            Self::NotARecord { script } => write!(
                f,
                "{script} returned an empty table or a list: Argo CD reads it as a JSON array; return {{status = ..., message = ...}}"
            ),
            Self::BadField {
                script,
                field,
                found,
            } => write!(
                f,
                "{script} returned a {field} of type {found}: Argo CD accepts only a string there (use tostring)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Parse { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The module's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A health script, ready to run against objects.
#[derive(Clone, Debug)]
pub struct HealthScript {
    name: String,
    source: String,
}

impl HealthScript {
    /// A script from its text; `name` appears in errors and Lua tracebacks.
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
        }
    }

    /// Reads a script file.
    pub fn load(path: &Path) -> Result<Self> {
        let source = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(path.display().to_string(), source))
    }

    /// The script the chart ships for `kind` of group `ferrite.dev` (`ClusterNetwork`, `IPPool`).
    pub fn for_kind(kind: &str) -> Result<Self> {
        Self::load(&script_path(ferrite_crds::GROUP, kind))
    }

    /// The script's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The script's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the script with `object` as `obj` and returns the health it assigns.
    pub fn evaluate(&self, object: &serde_json::Value) -> Result<Health> {
        let script = || self.name.clone();
        let lua = sandbox().map_err(|e| Error::Script {
            script: script(),
            lua_error: e.to_string(),
        })?;
        let obj = to_lua(&lua, object).map_err(|e| Error::Object {
            script: script(),
            lua_error: e.to_string(),
        })?;
        lua.globals().set("obj", obj).map_err(|e| Error::Object {
            script: script(),
            lua_error: e.to_string(),
        })?;

        let timed_out = Arc::new(AtomicBool::new(false));
        let flag = timed_out.clone();
        let start = Instant::now();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(1000),
            move |_, _| {
                if start.elapsed() > SCRIPT_TIMEOUT {
                    flag.store(true, Ordering::SeqCst);
                    return Err(mlua::Error::runtime("health script timed out"));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(|e| Error::Script {
            script: script(),
            lua_error: e.to_string(),
        })?;

        let returned = lua
            .load(self.source.as_str())
            .set_name(format!("@{}", self.name))
            .call::<MultiValue>(());
        let returned = match returned {
            Ok(values) => values,
            Err(_) if timed_out.load(Ordering::SeqCst) => {
                return Err(Error::Timeout { script: script() });
            }
            Err(e) => {
                return Err(Error::Script {
                    script: script(),
                    lua_error: e.to_string(),
                });
            }
        };
        // Argo CD reads the top of the stack: the chunk's last return value.
        let last = returned.into_iter().last().unwrap_or(Value::Nil);
        health_from(&self.name, last)
    }
}

/// The Lua state Argo CD gives a script from `argocd-cm` (`useOpenLibs` off).
fn sandbox() -> mlua::Result<Lua> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::PACKAGE | StdLib::OS,
        LuaOptions::default(),
    )?;
    // Argo CD's "safe os" has only time and date; `require("os")` gets the same table.
    let full: mlua::Table = lua.globals().get("os")?;
    let safe = lua.create_table()?;
    for name in ["time", "date"] {
        safe.set(name, full.get::<mlua::Function>(name)?)?;
    }
    lua.globals().set("os", safe.clone())?;
    let package: mlua::Table = lua.globals().get("package")?;
    let loaded: mlua::Table = package.get("loaded")?;
    loaded.set("os", safe)?;
    Ok(lua)
}

/// The object as Argo CD's decoder builds it: plain tables, `null` as `nil`.
fn to_lua(lua: &Lua, object: &serde_json::Value) -> mlua::Result<Value> {
    let options = mlua::serde::SerializeOptions::new()
        .set_array_metatable(false)
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.to_value_with(object, options)
}

/// Reads the returned table the way Argo CD's JSON round trip does.
fn health_from(script: &str, returned: Value) -> Result<Health> {
    let Value::Table(table) = returned else {
        return Err(Error::NotATable {
            script: script.to_owned(),
            found: returned.type_name(),
        });
    };
    // gopher-json encodes an empty table, or one with a sequence part, as a JSON array.
    let is_record = table.raw_len() == 0 && table.pairs::<Value, Value>().next().is_some();
    if !is_record {
        return Err(Error::NotARecord {
            script: script.to_owned(),
        });
    }
    let status = string_field(script, &table, "status")?;
    let message = string_field(script, &table, "message")?;
    Ok(match HealthStatus::parse(&status) {
        Some(status) => Health { status, message },
        None => Health {
            status: HealthStatus::Unknown,
            message: INVALID_STATUS_MESSAGE.to_owned(),
        },
    })
}

/// A string field of the returned table; absent is `""`, as Go's JSON decoder leaves it.
fn string_field(script: &str, table: &mlua::Table, field: &'static str) -> Result<String> {
    let value = table.raw_get::<Value>(field).map_err(|e| Error::Script {
        script: script.to_owned(),
        lua_error: e.to_string(),
    })?;
    match value {
        Value::Nil => Ok(String::new()),
        Value::String(s) => Ok(s.to_string_lossy()),
        other => Err(Error::BadField {
            script: script.to_owned(),
            field,
            found: other.type_name(),
        }),
    }
}

/// The `argocd-cm` key that holds the health script of `group`/`kind`.
pub fn config_map_key(group: &str, kind: &str) -> String {
    format!("resource.customizations.health.{group}_{kind}")
}

/// The file the chart ships the health script of `group`/`kind` in.
pub fn script_path(group: &str, kind: &str) -> PathBuf {
    crate::repo_root()
        .join(SCRIPT_DIR)
        .join(format!("{group}_{kind}.lua"))
}

/// The directory of the test objects (`e2e/testdata/argo`).
pub fn testdata_dir() -> PathBuf {
    crate::repo_root().join(TESTDATA_DIR)
}

/// Reads a JSON object, e.g. a fixture of [`testdata_dir`].
pub fn read_object(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(source: &str, object: serde_json::Value) -> Result<Health> {
        HealthScript::new("test.lua", source).evaluate(&object)
    }

    #[test]
    fn the_object_is_the_global_obj_with_arrays_as_sequences() {
        let object = json!({"metadata": {"name": "default"}, "items": ["a", "b", "c"]});
        let health = run(
            r#"return {status = "Healthy", message = obj.metadata.name .. " " .. #obj.items .. " " .. obj.items[1] .. obj.items[3]}"#,
            object,
        )
        .unwrap();
        assert_eq!(health.status, HealthStatus::Healthy);
        assert_eq!(health.message, "default 3 ac");
    }

    #[test]
    fn json_null_is_nil_and_integers_print_without_a_fraction() {
        let object = json!({"status": null, "metadata": {"generation": 3}});
        let health = run(
            r#"return {status = "Progressing", message = tostring(obj.status == nil) .. " " .. tostring(obj.metadata.generation)}"#,
            object,
        )
        .unwrap();
        assert_eq!(health.message, "true 3");
    }

    #[test]
    fn the_string_and_math_libraries_are_missing_as_in_argo_cd() {
        for source in [
            r#"return {status = string.format("%s", "Healthy")}"#,
            r#"return {status = "Healthy", message = tostring(math.floor(1.5))}"#,
            r#"local s = "Healthy"; return {status = s:lower()}"#,
            r#"return {status = "Healthy", message = io.read()}"#,
        ] {
            let err = run(source, json!({})).unwrap_err();
            assert!(matches!(err, Error::Script { .. }), "{source}: {err}");
        }
    }

    #[test]
    fn table_functions_and_the_safe_os_are_there_but_not_os_execute() {
        let health = run(
            r#"local t = {}; table.insert(t, "a"); table.insert(t, "b")
               return {status = "Healthy", message = table.concat(t, ",") .. " " .. type(os.time()) .. " " .. tostring(os.execute)}"#,
            json!({}),
        )
        .unwrap();
        assert_eq!(health.message, "a,b number nil");
    }

    #[test]
    fn a_missing_message_is_empty() {
        let health = run(r#"return {status = "Degraded"}"#, json!({})).unwrap();
        assert_eq!(
            health,
            Health {
                status: HealthStatus::Degraded,
                message: String::new()
            }
        );
    }

    #[test]
    fn an_unknown_status_becomes_unknown_with_argo_cds_message() {
        for source in [
            r#"return {status = "Fine", message = "x"}"#,
            r#"return {status = "healthy"}"#,
            r#"return {message = "no status"}"#,
        ] {
            let health = run(source, json!({})).unwrap();
            assert_eq!(health.status, HealthStatus::Unknown, "{source}");
            assert_eq!(health.message, INVALID_STATUS_MESSAGE, "{source}");
        }
    }

    #[test]
    fn the_last_return_value_is_the_one_that_counts() {
        let health = run(
            r#"return {status = "Degraded"}, {status = "Healthy"}"#,
            json!({}),
        )
        .unwrap();
        assert_eq!(health.status, HealthStatus::Healthy);
    }

    #[test]
    fn returning_something_other_than_a_table_is_an_error() {
        for (source, found) in [
            ("return \"Healthy\"", "string"),
            ("local x = 1", "nil"),
            ("return 3", "integer"),
        ] {
            match run(source, json!({})) {
                Err(Error::NotATable { found: f, .. }) => assert_eq!(f, found, "{source}"),
                other => panic!("{source}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_empty_table_or_a_list_is_an_error() {
        for source in ["return {}", r#"return {"Healthy", "ok"}"#] {
            assert!(
                matches!(run(source, json!({})), Err(Error::NotARecord { .. })),
                "{source}"
            );
        }
    }

    #[test]
    fn a_status_or_message_that_is_not_a_string_is_an_error() {
        match run(r#"return {status = "Healthy", message = 3}"#, json!({})) {
            Err(Error::BadField { field, found, .. }) => {
                assert_eq!((field, found), ("message", "integer"));
            }
            other => panic!("{other:?}"),
        }
        match run(r#"return {status = true}"#, json!({})) {
            Err(Error::BadField { field, found, .. }) => {
                assert_eq!((field, found), ("status", "boolean"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_syntax_error_names_the_script_and_the_line() {
        let err = run("local x = \nreturn {", json!({})).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Script { .. }), "{text}");
        assert!(text.contains("test.lua:2:"), "{text}");
    }

    #[test]
    fn indexing_a_missing_field_is_a_script_error() {
        let err = run(
            r#"return {status = "Healthy", message = obj.status.nodesReady}"#,
            json!({"metadata": {}}),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Script { .. }), "{err}");
        assert!(err.to_string().contains("status"), "{err}");
    }

    #[test]
    fn a_script_that_never_ends_is_stopped_after_a_second() {
        let started = Instant::now();
        let err = run("while true do end", json!({})).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(started.elapsed() < SCRIPT_TIMEOUT * 5);
    }

    #[test]
    fn status_names_round_trip() {
        for status in HealthStatus::ALL {
            assert_eq!(HealthStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(HealthStatus::parse("healthy"), None);
    }

    #[test]
    fn the_config_map_key_and_the_shipped_file_follow_argo_cds_naming() {
        assert_eq!(
            config_map_key("ferrite.dev", "IPPool"),
            "resource.customizations.health.ferrite.dev_IPPool"
        );
        assert!(
            script_path("ferrite.dev", "ClusterNetwork")
                .ends_with("charts/ferrite/argocd/ferrite.dev_ClusterNetwork.lua")
        );
    }
}
