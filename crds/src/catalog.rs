//! The bad-object catalog (`crds/testdata/invalid/`) and the examples (`docs/examples/`), loaded
//! for tests: the CEL test in this crate and the apiserver test in `e2e/` read the same files.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// One object the apiserver must refuse.
#[derive(Clone, Debug)]
pub struct Case {
    /// The file it came from.
    pub file: PathBuf,
    /// Text the refusal message must contain.
    pub expect: String,
    /// Which layer refuses it: `cel` or `openapi`.
    pub by: String,
    /// The example (file name in `docs/examples/`) this object is an update of.
    pub update_of: Option<String>,
    /// The object.
    pub object: Value,
}

/// A catalog or example file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{path} is not valid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// A catalog file lacks a header.
    #[error("{path} has no '# {header}' line")]
    MissingHeader {
        /// The file.
        path: PathBuf,
        /// The missing header key.
        header: &'static str,
    },
}

/// The repository root (this crate sits in `crds/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Reads a YAML file into JSON.
pub fn load(path: &Path) -> Result<(String, Value), Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let value = serde_saphyr::from_str(&text).map_err(|e| Error::Yaml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok((text, value))
}

fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every entry of `crds/testdata/invalid/`, sorted by file name.
pub fn invalid_cases() -> Result<Vec<Case>, Error> {
    yaml_files(&repo_root().join("crds/testdata/invalid"))?
        .into_iter()
        .map(|file| {
            let (text, object) = load(&file)?;
            let need = |key: &'static str| {
                header(&text, key).ok_or_else(|| Error::MissingHeader {
                    path: file.clone(),
                    header: key,
                })
            };
            Ok(Case {
                expect: need("expect:")?,
                by: need("by:")?,
                update_of: header(&text, "update-of:"),
                object,
                file: file.clone(),
            })
        })
        .collect()
}

/// The example `docs/examples/<name>`.
pub fn example(name: &str) -> Result<Value, Error> {
    Ok(load(&repo_root().join("docs/examples").join(name))?.1)
}

/// Every example in `docs/examples/`, with its file.
pub fn examples() -> Result<Vec<(PathBuf, Value)>, Error> {
    yaml_files(&repo_root().join("docs/examples"))?
        .into_iter()
        .map(|f| Ok((f.clone(), load(&f)?.1)))
        .collect()
}
