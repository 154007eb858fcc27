//! Typed errors of `import`: everything that can stop a source from becoming a target.

use std::path::PathBuf;

/// Why a source could not become a target; each variant names the key, family or file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The mapping file of a family is malformed (bad TOML, unknown transform, bad regex).
    #[error("mapping {family}: {reason}")]
    Mapping {
        /// The family whose mapping is broken.
        family: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The family could not be recognised and none was given.
    #[error("could not tell which family this checkpoint belongs to ({reason}); pass --family")]
    UnknownFamily {
        /// Why no family applies.
        reason: String,
    },
    /// The source and the target disagree on a dimension (embed dim, depth, heads, mlp).
    #[error("source and target disagree on {what}: source {source_value}, target {target_value}")]
    DimensionMismatch {
        /// The dimension (`embed dim`, `depth`, …).
        what: String,
        /// The source's value.
        source_value: usize,
        /// The target's value.
        target_value: usize,
    },
    /// A target key a rule feeds from the source has no source tensor.
    #[error("target key '{target}' needs source key '{source_key}', which the checkpoint lacks")]
    MissingSource {
        /// The target key.
        target: String,
        /// The source key it needs.
        source_key: String,
    },
    /// A transform produced a shape other than the target's.
    #[error("target key '{target}': got shape {got:?} from {sources:?} but the target needs {want:?}")]
    ShapeMismatch {
        /// The target key.
        target: String,
        /// The source keys it was produced from.
        sources: Vec<String>,
        /// The shape produced.
        got: Vec<usize>,
        /// The shape the target needs.
        want: Vec<usize>,
    },
    /// A transform could not be applied to its inputs.
    #[error("target key '{target}': {transform} failed: {reason}")]
    Transform {
        /// The target key.
        target: String,
        /// The transform's name.
        transform: String,
        /// Why it failed.
        reason: String,
    },
    /// The source holds something the target layout cannot express; `--lossy` drops it.
    #[error("source key '{source_key}' cannot be expressed by the target: {reason} (pass --lossy to drop it; the report records the decision)")]
    Inexpressible {
        /// The source key.
        source_key: String,
        /// What the target layout lacks.
        reason: String,
    },
    /// A source key that no rule uses and no drop rule names.
    #[error("source key '{source_key}' is used by no rule of family {family} (did you pick the right family?)")]
    UnusedSource {
        /// The source key.
        source_key: String,
        /// The family whose rules were applied.
        family: String,
    },
    /// A NaN or Inf with `--strict-finite`.
    #[error("source key '{source_key}' holds {count} non-finite values (--strict-finite)")]
    NonFinite {
        /// The key (the target key for produced values).
        source_key: String,
        /// How many values are NaN or infinite.
        count: usize,
    },
    /// A value overflows the output dtype.
    #[error("target key '{target}': {value} does not fit in {dtype}")]
    Overflow {
        /// The target key.
        target: String,
        /// The value that does not fit.
        value: f32,
        /// The output dtype.
        dtype: String,
    },
    /// An option that is not implemented in this build.
    #[error("{0} is not supported in this build")]
    Unsupported(String),
    /// Reading an input failed.
    #[error("{path}: {reason}")]
    Input {
        /// The input.
        path: PathBuf,
        /// What reading it reported.
        reason: String,
    },
}

/// Errors from the other stages, carried through `import`.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The import itself refused.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The source could not be read.
    #[error(transparent)]
    Format(#[from] crate::formats::FormatError),
    /// The target config is refused.
    #[error(transparent)]
    Config(#[from] crate::model::ConfigError),
    /// An output could not be written.
    #[error(transparent)]
    Write(#[from] crate::export::atomic::WriteError),
    /// The target config could not be resolved.
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
}

#[cfg(test)]
mod tests {
    //! One test per [`ImportError`] variant, matching the variant, not the message.
    use super::*;
    use crate::families::mapping::{self, Mapping, PlanOptions};
    use crate::families::pipeline;
    use crate::target::TargetSpec;
    use crate::formats::{DType, Storage, TensorView};
    use crate::model::ComerConfig;
    use std::sync::Arc;

    fn t(shape: &[usize], fill: f32) -> TensorView {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n).flat_map(|_| fill.to_le_bytes()).collect();
        TensorView::contiguous(std::path::Path::new("t"), "t", DType::F32, shape.to_vec(), Arc::new(Storage::Owned(bytes)))
            .expect("view")
    }

    fn tiny() -> ComerConfig {
        let text = include_str!("../../fixtures/forward/det_tiny/case.json");
        ComerConfig::from_case_json(text).expect("config")
    }

    /// A DeiT-shaped tiny source (embed 48, depth 4).
    fn deit(d: usize, depth: usize) -> Vec<(String, TensorView)> {
        let mut v = vec![
            ("pos_embed".to_string(), t(&[1, 17, d], 0.1)),
            ("patch_embed.proj.weight".into(), t(&[d, 3, 16, 16], 0.1)),
            ("patch_embed.proj.bias".into(), t(&[d], 0.1)),
        ];
        for i in 0..depth {
            for (n, s) in [
                ("norm1.weight", vec![d]),
                ("norm1.bias", vec![d]),
                ("attn.qkv.weight", vec![3 * d, d]),
                ("attn.qkv.bias", vec![3 * d]),
                ("attn.proj.weight", vec![d, d]),
                ("attn.proj.bias", vec![d]),
                ("norm2.weight", vec![d]),
                ("norm2.bias", vec![d]),
                ("mlp.fc1.weight", vec![4 * d, d]),
                ("mlp.fc1.bias", vec![4 * d]),
                ("mlp.fc2.weight", vec![d, 4 * d]),
                ("mlp.fc2.bias", vec![d]),
            ] {
                v.push((format!("blocks.{i}.{n}"), t(&s, 0.1)));
            }
        }
        v
    }

    fn run(owned: &[(String, TensorView)], family: &str) -> Result<mapping::Plan, pipeline_err::E> {
        let sd: Vec<(String, &TensorView)> = owned.iter().map(|(k, v)| (k.clone(), v)).collect();
        pipeline::plan_state_dict(family, &sd, &TargetSpec::Config(Box::new(tiny())), &PlanOptions::default())
            .map(|(_, _, p)| p)
    }

    mod pipeline_err {
        pub type E = super::PipelineError;
    }

    fn import_err(r: Result<mapping::Plan, PipelineError>) -> ImportError {
        match r {
            Err(PipelineError::Import(e)) => e,
            other => panic!("expected an ImportError, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn mapping_error() {
        assert!(matches!(Mapping::parse("family = 1"), Err(ImportError::Mapping { .. })));
        let bad = "family='x'\ndescription='y'\n[[map]]\ntarget='('\ntransform='rename'\n";
        assert!(matches!(Mapping::parse(bad), Err(ImportError::Mapping { .. })));
    }

    #[test]
    fn unknown_family() {
        assert!(matches!(pipeline::pick_family(None, crate::families::detect::Family::Unknown, &["foo.bar"]), Err(ImportError::UnknownFamily { .. })));
        assert!(matches!(crate::families::mapping_for("nope"), Err(ImportError::UnknownFamily { .. })));
    }

    #[test]
    fn dimension_mismatch() {
        let e = import_err(run(&deit(48, 6), "deit"));
        assert!(matches!(e, ImportError::DimensionMismatch { .. }), "{e}");
    }

    #[test]
    fn missing_source() {
        let mut s = deit(48, 4);
        s.retain(|(k, _)| k != "blocks.2.attn.proj.weight");
        let e = import_err(run(&s, "deit"));
        assert!(matches!(e, ImportError::MissingSource { .. }), "{e}");
    }

    #[test]
    fn shape_mismatch() {
        let mut s = deit(48, 4);
        for (k, v) in s.iter_mut() {
            if k == "blocks.1.attn.proj.bias" {
                *v = t(&[47], 0.0);
            }
        }
        let plan = run(&s, "deit").expect("plans");
        let lookup = s.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let p = plan.targets.iter().find(|p| p.entry.name == "blocks.1.attn.proj.bias").expect("key");
        let e = mapping::produce(p, &lookup, &PlanOptions::default(), 0).expect_err("shape");
        assert!(matches!(e, ImportError::ShapeMismatch { .. }), "{e}");
    }

    #[test]
    fn transform_error() {
        let s = deit(48, 4);
        let plan = run(&s, "deit").expect("plans");
        let lookup = s.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut p = plan.targets.iter().find(|p| p.entry.name == "blocks.0.norm1.bias").expect("key").clone();
        p.origin = mapping::Origin::Source {
            keys: vec!["blocks.0.norm1.bias".into()],
            transform: mapping::Transform::Transpose,
            part: None,
            note: None,
        };
        let e = mapping::produce(&p, &lookup, &PlanOptions::default(), 0).expect_err("1-D transpose");
        assert!(matches!(e, ImportError::Transform { .. }), "{e}");
    }

    #[test]
    fn inexpressible() {
        let mut s = deit(48, 4);
        s.push(("mask_token".into(), t(&[1, 48], 0.0)));
        s.push(("register_tokens".into(), t(&[1, 4, 48], 0.0)));
        s.push(("blocks.0.ls1.gamma".into(), t(&[48], 1.0)));
        let e = import_err(run(&s, "dinov2"));
        assert!(matches!(e, ImportError::Inexpressible { .. }), "{e}");
    }

    #[test]
    fn unused_source() {
        let mut s = deit(48, 4);
        s.push(("mystery.weight".into(), t(&[3], 0.0)));
        let e = import_err(run(&s, "deit"));
        assert!(matches!(e, ImportError::UnusedSource { .. }), "{e}");
    }

    #[test]
    fn non_finite_and_overflow() {
        let e = ImportError::NonFinite { source_key: "k".into(), count: 1 };
        assert!(e.to_string().contains("non-finite"));
        let big = mapping::Values::F32(vec![1.0e6]);
        let e = pipeline::encode("blocks.0.mlp.fc1.weight", &big, DType::F16).expect_err("overflow");
        assert!(matches!(e, ImportError::Overflow { .. }), "{e}");
    }

    #[test]
    fn unsupported_and_input() {
        let s = deit(48, 4);
        let plan = run(&s, "deit").expect("plans");
        let lookup = s.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let p = plan.targets.iter().find(|p| p.entry.name == "patch_embed.proj.weight").expect("key");
        // Same kernel size: no resize needed, so pinv is not reached; ask the geometric path instead.
        let _ = mapping::produce(p, &lookup, &PlanOptions { patch_pinv: true, ..Default::default() }, 0).expect("no resize");
        let e = ImportError::Input { path: "/nonexistent/c.json".into(), reason: "hashing: gone".into() };
        assert!(e.to_string().starts_with("/nonexistent/c.json: "), "{e}");
        let e = ImportError::Unsupported("--relpos-resize geometric".into());
        assert!(e.to_string().contains("not supported"));
    }
}
