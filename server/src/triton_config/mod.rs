//! A model's configuration file: Keel's `model.toml` or Triton's `config.pbtxt`.
//!
//! [`load`] is the one reader of a model directory's configuration (the repository's reconcile, the
//! MLflow plan and `keel check` all go through it). A `config.pbtxt` is parsed as protobuf text format
//! against Triton's ModelConfig schema (`proto/model_config.proto`, compiled at build time), so any
//! valid Triton configuration parses; what Keel honours is mapped onto a [`ModelToml`], and every field
//! Keel cannot honour becomes a warning naming it ([`pbtxt`]). A platform or backend other than ONNX
//! Runtime, or a malformed file, is an error: the model does not load, with that reason.
//!
//! [`effective`] goes the other way: the configuration a loaded version actually runs with, as Triton's
//! ModelConfig, which `GET /v2/models/{m}/config` ([`to_json`]) and the gRPC ModelConfig RPC both return.

mod effective;
mod pbtxt;
mod text;

use std::path::Path;

pub use effective::{effective, to_json};
pub use pbtxt::from_pbtxt;
pub use text::parse;

use crate::model_toml::ModelToml;

/// Triton's ModelConfig and the messages it uses, as Rust types (generated from
/// `proto/model_config.proto` by build.rs, in the `inference` package's one module).
pub use crate::protocol::inference as pb;

/// Keel's own configuration file, in a model's directory.
pub const MODEL_TOML: &str = crate::repository::CONFIG_FILE;
/// Triton's model configuration, read when there is no `model.toml`.
pub const CONFIG_PBTXT: &str = "config.pbtxt";

/// Which file a model's configuration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigFile {
    /// Neither file: everything from the ONNX graph and Keel's defaults.
    None,
    ModelToml,
    ConfigPbtxt,
}

/// A model's configuration as read from its directory.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: ModelToml,
    /// Identifies the configuration: its fingerprint changing reloads every version. The text of the file
    /// in use (empty without one), after the file's name, so that switching files is a change too.
    pub fingerprint_text: String,
    pub file: ConfigFile,
    /// What the configuration asks for that Keel does not do (each names the field), or files it ignores.
    /// Logged when the model is loaded; listed by `keel check`.
    pub warnings: Vec<String>,
}

/// Reads the configuration of the model directory `dir`: `model.toml` if present (a `config.pbtxt` next
/// to it is ignored, with a warning), else `config.pbtxt`, else defaults. Blocking. An error names the file
/// and, for a parse error, the line and column.
pub fn load(dir: &Path) -> Result<LoadedConfig, String> {
    let toml_path = dir.join(MODEL_TOML);
    let pbtxt_path = dir.join(CONFIG_PBTXT);
    let toml = read_optional(&toml_path)?;
    if let Some(text) = toml {
        let config =
            ModelToml::parse(&text).map_err(|e| format!("{}: {e}", toml_path.display()))?;
        let mut warnings = Vec::new();
        if pbtxt_path.exists() {
            warnings.push(format!(
                "{CONFIG_PBTXT} is ignored: {MODEL_TOML} is present and takes precedence"
            ));
        }
        return Ok(LoadedConfig {
            config,
            fingerprint_text: format!("{MODEL_TOML}\n{text}"),
            file: ConfigFile::ModelToml,
            warnings,
        });
    }
    match read_optional(&pbtxt_path)? {
        Some(text) => {
            let model = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (config, warnings) =
                from_pbtxt(&text, &model).map_err(|e| format!("{}: {e}", pbtxt_path.display()))?;
            Ok(LoadedConfig {
                config,
                fingerprint_text: format!("{CONFIG_PBTXT}\n{text}"),
                file: ConfigFile::ConfigPbtxt,
                warnings: warnings
                    .into_iter()
                    .map(|w| format!("{CONFIG_PBTXT}: {w}"))
                    .collect(),
            })
        }
        None => Ok(LoadedConfig {
            config: ModelToml::default(),
            fingerprint_text: String::new(),
            file: ConfigFile::None,
            warnings: Vec::new(),
        }),
    }
}

/// The file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir()
            .join(format!("keel-triton-{}-{tag}", std::process::id()))
            .join("simple");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn triton_load_picks_the_file_and_fingerprints_its_text() {
        let dir = model_dir("pick");
        let none = load(&dir).unwrap();
        assert_eq!(none.file, ConfigFile::None);
        assert_eq!(none.config, ModelToml::default());
        assert!(none.fingerprint_text.is_empty());

        std::fs::write(dir.join(CONFIG_PBTXT), "max_batch_size: 8\n").unwrap();
        let pbtxt = load(&dir).unwrap();
        assert_eq!(pbtxt.file, ConfigFile::ConfigPbtxt);
        assert_eq!(pbtxt.config.max_batch_size, Some(8));
        assert!(pbtxt.fingerprint_text.contains("max_batch_size: 8"));
        assert!(pbtxt.warnings.is_empty(), "{:?}", pbtxt.warnings);

        // An empty model.toml and an empty config.pbtxt are different configurations.
        std::fs::write(dir.join(CONFIG_PBTXT), "").unwrap();
        let empty_pbtxt = load(&dir).unwrap().fingerprint_text;
        std::fs::write(dir.join(MODEL_TOML), "").unwrap();
        let both = load(&dir).unwrap();
        assert_eq!(both.file, ConfigFile::ModelToml);
        assert_ne!(both.fingerprint_text, empty_pbtxt);
        assert_eq!(both.warnings.len(), 1);
        assert!(both.warnings[0].contains("config.pbtxt is ignored"));

        std::fs::write(dir.join(MODEL_TOML), "max_batch = 1").unwrap();
        let err = load(&dir).unwrap_err();
        assert!(
            err.contains("model.toml") && err.contains("max_batch"),
            "{err}"
        );
    }

    #[test]
    fn triton_load_errors_name_the_file_and_position() {
        let dir = model_dir("error");
        std::fs::write(
            dir.join(CONFIG_PBTXT),
            "name: \"simple\"\nmax_batch_size: 8\ninput [ { name: \"x\" data_typo: TYPE_FP32 } ]\n",
        )
        .unwrap();
        let err = load(&dir).unwrap_err();
        assert!(err.contains("config.pbtxt"), "{err}");
        assert!(err.contains("line 3, column 21"), "{err}");
        assert!(err.contains("data_typo"), "{err}");

        std::fs::write(dir.join(CONFIG_PBTXT), "platform: \"tensorrt_plan\"\n").unwrap();
        let err = load(&dir).unwrap_err();
        assert!(err.contains("tensorrt_plan"), "{err}");

        std::fs::write(dir.join(CONFIG_PBTXT), "name: \"other\"\n").unwrap();
        let warnings = load(&dir).unwrap().warnings;
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("config.pbtxt: name") && w.contains("simple")),
            "{warnings:?}"
        );
    }
}
