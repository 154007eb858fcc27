//! What kind of failure an error is, for callers that report it (the `comer-port` binary maps
//! it to an exit code). Each stage keeps its own typed error (`formats::FormatError`,
//! `model::ConfigError`, `model::ModelError`, `target::TargetError`, `families::error`,
//! `verify::VerifyError`, `export::atomic::WriteError`, `export::onnx::OnnxError`); this module
//! is the one place that knows which of them mean "bad input", which "output not written" and
//! which "usage" (the command must name a choice it left open, such as the target; its
//! `--config` file is refused; its outputs collide with each other or with its inputs).
//! A config recorded in an artifact or taken from a source is that file's fault: bad input.
//! A failed check is not an error: it is a verdict in a `verify::Report`.

use std::error::Error;

use crate::export::atomic::WriteError;
use crate::export::outputs::CollisionError;
use crate::export::onnx::OnnxError;
use crate::families::error::ImportError;
use crate::import::PipelineError;
use crate::formats::FormatError;
use crate::model::{ConfigError, ModelError};
use crate::target::TargetError;
use crate::verify::VerifyError;

/// The class of a failure, as the command line reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An input was unreadable, refused or mismatched (a file, a config, a dimension).
    BadInput,
    /// An output could not be written (it exists and overwriting was not asked for, or I/O).
    OutputNotWritten,
    /// The command is at fault, not a file: it left a choice open that it must make (no
    /// target given and none or several presets fit; a flavour asked for where nothing gives
    /// its dimensions), its `--config` file's config is refused, or two of its outputs, or an
    /// output and an input, are one file.
    Usage,
}

impl ErrorKind {
    /// The kind of one link of an error chain, when it is one of this library's errors;
    /// `None` for anything else (a message, an `std::io::Error`). Walk a chain and take the
    /// first `Some`: a stage error wrapping a write failure transparently (`PipelineError::Write`,
    /// `OnnxError::Write`) is classified here, since the chain never shows the `WriteError`.
    pub fn of(err: &(dyn Error + 'static)) -> Option<ErrorKind> {
        use ErrorKind::{BadInput, OutputNotWritten, Usage};
        if err.is::<WriteError>() {
            return Some(OutputNotWritten);
        }
        if err.is::<CollisionError>() {
            return Some(Usage);
        }
        if let Some(e) = err.downcast_ref::<PipelineError>() {
            return Some(match e {
                PipelineError::Write(_) => OutputNotWritten,
                PipelineError::Collision(_) => Usage,
                PipelineError::Target(t) if t.is_usage() => Usage,
                _ => BadInput,
            });
        }
        if let Some(t) = err.downcast_ref::<TargetError>() {
            return Some(if t.is_usage() { Usage } else { BadInput });
        }
        if let Some(e) = err.downcast_ref::<OnnxError>() {
            return Some(if matches!(e, OnnxError::Write(_)) { OutputNotWritten } else { BadInput });
        }
        #[cfg(feature = "libtorch")]
        if err.is::<crate::libtorch::LibtorchError>() {
            return Some(BadInput);
        }
        let bad_input = err.is::<FormatError>()
            || err.is::<ConfigError>()
            || err.is::<ModelError>()
            || err.is::<ImportError>()
            || err.is::<VerifyError>();
        bad_input.then_some(BadInput)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;
    use crate::export::atomic::WriteError;
    use crate::families::error::ImportError;
use crate::import::PipelineError;
    use std::path::PathBuf;

    #[test]
    fn write_failures_are_output_not_written_even_when_wrapped() {
        let exists = || WriteError::Exists(PathBuf::from("out.safetensors"));
        assert_eq!(ErrorKind::of(&exists()), Some(ErrorKind::OutputNotWritten));
        assert_eq!(ErrorKind::of(&PipelineError::from(exists())), Some(ErrorKind::OutputNotWritten));
        assert_eq!(
            ErrorKind::of(&crate::export::onnx::OnnxError::from(exists())),
            Some(ErrorKind::OutputNotWritten)
        );
    }

    #[test]
    fn stage_errors_are_bad_input_and_others_unclassified() {
        let e = ImportError::Unsupported("x".into());
        assert_eq!(ErrorKind::of(&e), Some(ErrorKind::BadInput));
        assert_eq!(ErrorKind::of(&PipelineError::from(e)), Some(ErrorKind::BadInput));
        let fe = crate::formats::FormatError::Empty { path: PathBuf::from("f") };
        assert_eq!(ErrorKind::of(&fe), Some(ErrorKind::BadInput));
        assert_eq!(ErrorKind::of(&std::io::Error::other("plain")), None);
    }

    #[test]
    fn collisions_and_refused_config_files_are_usage() {
        use crate::export::outputs::CollisionError;
        use crate::model::ConfigError;
        use crate::target::TargetError;
        let c = || CollisionError::Outputs { role: "--pth".into(), path: PathBuf::from("x"), other: "-o".into(), how: String::new() };
        assert_eq!(ErrorKind::of(&c()), Some(ErrorKind::Usage));
        assert_eq!(ErrorKind::of(&PipelineError::from(c())), Some(ErrorKind::Usage));
        let bad = || ConfigError::Invalid("x".into());
        let file = TargetError::ConfigFile { path: PathBuf::from("c.json"), error: bad() };
        assert_eq!(ErrorKind::of(&PipelineError::from(file)), Some(ErrorKind::Usage));
        let recorded = TargetError::Recorded { path: PathBuf::from("a.safetensors"), error: bad() };
        assert_eq!(ErrorKind::of(&recorded), Some(ErrorKind::BadInput));
    }

    #[test]
    fn an_open_choice_is_usage_even_when_wrapped() {
        use crate::target::TargetError;
        assert_eq!(ErrorKind::of(&TargetError::NoTarget), Some(ErrorKind::Usage));
        assert_eq!(ErrorKind::of(&PipelineError::from(TargetError::NoTarget)), Some(ErrorKind::Usage));
        let missing = TargetError::Input { path: PathBuf::from("c.json"), reason: "gone".into() };
        assert_eq!(ErrorKind::of(&PipelineError::from(missing)), Some(ErrorKind::BadInput));
    }
}
