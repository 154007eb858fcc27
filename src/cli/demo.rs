//! `comer-port demo`: the whole pipeline on the bundled DeiT-tiny fixture, in one folder —
//! inspect the source, import it into the `vit-comer-det` tiny layout, verify the artifact
//! against its source, run the forward on a seeded image with the PCA view, export ONNX —
//! printing each step's figures and the files it wrote. Every step calls the function its
//! own subcommand uses (`import::run`, `verify::report`, `run::forward_to_files`,
//! `export::write_onnx`), so the demo proves what the commands do, not a copy of them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use comer_port::export::atomic::{self, WriteError};
use comer_port::export::onnx::{self, ExportOptions};
use comer_port::families::detect;
use comer_port::families::mapping::{Origin, PlanOptions};
use comer_port::import::{self, ImportOptions};
use comer_port::formats::DType;
use comer_port::model::ComerConfig;
use comer_port::target::{self, Basis, TargetSpec};
use comer_port::text::{EscapedPath, escape, json_safe};
use comer_port::verify::parity::seeded_values;

/// Seed of the fresh CTI/MRFP parameters, the verify images and the demo image.
const SEED: u64 = 0;
/// Number of steps, for the `[n/STEPS]` prefix.
const STEPS: usize = 5;
/// How many fresh temporary folder names to try before giving up.
const TEMP_TRIES: u32 = 100;

/// The bundled source: the DeiT-tiny fixture, imported with the det_tiny config.
const BUNDLED: &[u8] = include_bytes!("../../fixtures/sources/deit/deit_tiny.pth");
const BUNDLED_CONFIG: &str = include_str!("../../fixtures/forward/det_tiny/case.json");

/// File names inside the demo folder.
const SOURCE: &str = "deit_tiny.pth";
const ARTIFACT: &str = "deit_tiny.comer.safetensors";
const ARTIFACT_PTH: &str = "deit_tiny.comer.pth";
const REPORT: &str = "import_report.json";
const IMAGE: &str = "input.png";
const PYRAMID: &str = "pyramid.safetensors";
const VIZ: &str = "pyramid.png";
const ONNX: &str = "deit_tiny.comer.onnx";

/// Arguments of `comer-port demo`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Steps, on the DeiT-tiny checkpoint and det_tiny config bundled in the binary \
(no network, no files needed):\n  \
1. inspect  write the source into the folder and read it (format, family, config, tensors)\n  \
2. import   remap it into vit-comer-det (seed 0): .safetensors, .pth, .config.json, report\n  \
3. verify   round trips, mapping parity with the source, backbone checks (the verdict table)\n  \
4. run      the forward on a seeded 64x64 PNG: pyramid.safetensors and the PCA view pyramid.png\n  \
5. export   ONNX (opset 19, DeformConv sampling) at the config's image size\n\n\
The folder is always kept (--keep is implied) and its path printed: a fresh one under the system \
temp folder, or --dir DIR. Nothing is ever overwritten without --force.\n\n\
Examples:\n  comer-port demo\n  comer-port demo --dir demo-out\n  comer-port demo --dir demo-out --force --json\n\n\
Exit codes: 0 ok, 1 a verify check failed, 3 bad input, 4 output not written (DIR not empty without \
--force, I/O error).")]
pub struct Args {
    /// Write into DIR (created when missing) instead of a fresh temporary folder. A non-empty
    /// DIR is refused unless --force.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Use a non-empty --dir and overwrite the demo's files in it.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object (folder, steps with figures and files, verify report) on stdout
    /// instead of the step lines.
    #[arg(long)]
    pub json: bool,
}

/// One finished step: what it did, its key figures and the files it wrote.
#[derive(Debug, serde::Serialize)]
struct Step {
    step: usize,
    name: &'static str,
    summary: String,
    figures: serde_json::Value,
    files: Vec<PathBuf>,
    seconds: f64,
}

/// The steps so far, printed as they finish unless the output is JSON.
struct Log {
    json: bool,
    steps: Vec<Step>,
}

impl Log {
    fn done(&mut self, name: &'static str, summary: String, figures: serde_json::Value, files: Vec<PathBuf>, t0: Instant) {
        let step = Step {
            step: self.steps.len() + 1,
            name,
            summary,
            figures,
            files,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if !self.json {
            println!("[{}/{STEPS}] {:<8}{} ({:.2} s)", step.step, step.name, escape(&step.summary), step.seconds);
            for f in &step.files {
                let bytes = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                println!("        {} ({bytes} bytes)", EscapedPath(f));
            }
        }
        self.steps.push(step);
    }

    fn files(&self) -> Vec<&Path> {
        self.steps.iter().flat_map(|s| s.files.iter().map(PathBuf::as_path)).collect()
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let dir = prepare_dir(a.dir.as_deref(), a.force)?;
    check_outputs(&dir)?;
    let force = a.force;
    let mut log = Log { json: a.json, steps: Vec::new() };
    if !a.json {
        println!("comer-port demo in {}", EscapedPath(&dir));
    }

    // 1. inspect
    let t0 = Instant::now();
    let source = dir.join(SOURCE);
    atomic::write_all(&source, BUNDLED, force)?;
    let ck = comer_port::formats::open(&source)?;
    let det = detect::detect_checkpoint(&ck);
    let (_, sd) = ck.state_dict();
    let sha = comer_port::formats::sha256_bytes(BUNDLED);
    let dims = det.config.as_ref().map(|c| {
        format!("embed {} depth {} heads {} patch {}", c.embed_dim, c.depth, c.num_heads, c.patch_size)
    });
    log.done(
        "inspect",
        format!(
            "wrote the bundled source and read it: {}, family {}, {}, {} tensors",
            ck.format.name(),
            det.family,
            dims.as_deref().unwrap_or("config not inferred"),
            sd.len()
        ),
        serde_json::json!({
            "format": ck.format.name(),
            "family": det.family,
            "config": det.config,
            "tensors": sd.len(),
            "bytes": BUNDLED.len(),
            "sha256": sha,
        }),
        vec![source.clone()],
        t0,
    );
    drop(ck);

    // 2. import
    let t0 = Instant::now();
    let artifact = dir.join(ARTIFACT);
    let artifact_pth = dir.join(ARTIFACT_PTH);
    let report_json = dir.join(REPORT);
    let cfg = ComerConfig::from_case_json(BUNDLED_CONFIG)?;
    let opts = ImportOptions {
        family: None,
        target: TargetSpec::Config(Box::new(cfg.clone())),
        seed: SEED,
        dtype: DType::F32,
        plan: PlanOptions::default(),
        strict_finite: false,
        no_buffers: false,
        out: Some(artifact.clone()),
        pth: Some(artifact_pth),
        key_prefix: None,
        report: Some(report_json),
        write_config: true,
        force,
        // demo prints each step's figures itself, on stdout.
        progress: comer_port::progress::Progress::QUIET,
        // import verifies and records its verdict in the artifact; step 3 re-runs the full
        // `verify` (with the .pth round trip) the way a user would.
        verify: true,
        source_activation: None,
    };
    let s = import::run(&source, None, &opts)?;
    let fresh = s.plan.targets.iter().filter(|p| matches!(p.origin, Origin::Fresh { .. })).count();
    let total = s.plan.targets.len();
    log.done(
        "import",
        format!(
            "{} ({}) into {} {}x{}: {total} target keys ({} from the source, {fresh} fresh, seed {})",
            s.source,
            s.family,
            s.flavor,
            cfg.img_size,
            cfg.img_size,
            total - fresh,
            s.seed
        ),
        serde_json::json!({
            "family": s.family,
            "flavor": s.flavor,
            "img_size": cfg.img_size,
            "target_keys": total,
            "from_source": total - fresh,
            "fresh": fresh,
            "seed": s.seed,
            "notes": s.plan.decisions.iter().chain(&s.warnings).collect::<Vec<_>>(),
        }),
        import::output_paths(&opts),
        t0,
    );

    // 3. verify: the artifact's own metadata config, as `comer-port verify` reads it.
    let t0 = Instant::now();
    let vcfg = target::resolve(&TargetSpec::Recorded, Basis::Artifact(&artifact))?;
    let report = super::verify::report(
        &artifact,
        Some(&source),
        None,
        None,
        &vcfg,
        &[],
        SEED,
        &comer_port::progress::Progress::QUIET,
    )?;
    let ran = report.checks.iter().filter(|c| c.skipped.is_none()).count();
    let worst = report
        .checks
        .iter()
        .filter(|c| c.skipped.is_none() && c.bound > 0.0)
        .map(|c| c.figures.max_rel)
        .fold(0.0, f64::max);
    let passed = report.passed();
    log.done(
        "verify",
        format!(
            "{ran} checks ran, {} skipped, worst relative difference {worst:.3e}: {}",
            report.skipped(),
            if passed { "passed" } else { "FAILED" }
        ),
        serde_json::json!({"checks": ran, "skipped": report.skipped(), "worst_max_rel": worst, "passed": passed}),
        Vec::new(),
        t0,
    );
    if !a.json {
        print!("{}", indent(&report.render_table(), "        "));
    }
    if !passed {
        return finish(&log, &dir, &report, super::verify::verdict_code(&report));
    }

    // 4. run
    let t0 = Instant::now();
    let image = dir.join(IMAGE);
    atomic::write_all(&image, &seeded_png(SEED, vcfg.img_size, vcfg.img_size)?, force)?;
    let pyramid = dir.join(PYRAMID);
    let viz = dir.join(VIZ);
    let quiet = comer_port::progress::Progress::QUIET;
    let fw = super::run::forward_to_files(&artifact, &vcfg, &image, Some(&pyramid), false, Some(&viz), force, &quiet)?;
    let shapes: Vec<String> = fw
        .pyramid
        .iter()
        .map(|s| s.iter().map(usize::to_string).collect::<Vec<_>>().join("x"))
        .collect();
    log.done(
        "run",
        format!(
            "forward on a seeded {0}x{0} image: f1..f4 {1}; {2} tensors and the PCA view written",
            vcfg.img_size,
            shapes.join(", "),
            fw.tensors
        ),
        serde_json::json!({"image": [vcfg.img_size, vcfg.img_size], "pyramid": fw.pyramid, "tensors": fw.tensors}),
        vec![image, pyramid, viz],
        t0,
    );

    // 5. export
    let t0 = Instant::now();
    let onnx_path = dir.join(ONNX);
    let (h, w) = (vcfg.img_size, vcfg.img_size);
    onnx::check_input_size(h, w)?;
    let ck = comer_port::formats::open(&artifact)?;
    let opts = ExportOptions::new(h, w);
    let deform = opts.deform;
    let written = super::export::write_onnx(&ck, &artifact, &vcfg, opts, &onnx_path, force)?;
    let mut files = vec![onnx_path];
    files.extend(written.external.as_ref().map(|(p, _)| p.clone()));
    log.done(
        "export",
        format!(
            "ONNX opset {}, input 1x3x{h}x{w}: {} nodes, {} initializers, {} deformable sampling",
            deform.opset(),
            written.nodes,
            written.initializers,
            deform.name()
        ),
        serde_json::json!({
            "opset": deform.opset(),
            "input": [1, 3, h, w],
            "nodes": written.nodes,
            "initializers": written.initializers,
            "model_bytes": written.model_bytes,
            "deform": deform.name(),
        }),
        files,
        t0,
    );

    finish(&log, &dir, &report, super::EXIT_OK)
}

/// Print the closing lines (or the JSON object) and return `code`.
fn finish(log: &Log, dir: &Path, report: &comer_port::verify::Report, code: i32) -> anyhow::Result<i32> {
    let artifact = dir.join(ARTIFACT);
    let source = dir.join(SOURCE);
    if log.json {
        let v = serde_json::json!({
            "dir": dir,
            "passed": code == super::EXIT_OK,
            "steps": log.steps,
            "files": log.files(),
            "verify": report.to_json(),
        });
        println!("{}", json_safe(&serde_json::to_string_pretty(&v)?));
        return Ok(code);
    }
    if code != super::EXIT_OK {
        println!("stopped after verify: the artifact did not pass, so it was neither run nor exported");
    }
    println!("{} files in {} (kept; remove the folder when done)", log.files().len(), EscapedPath(dir));
    println!("next: comer-port verify {} --source {}", EscapedPath(&artifact), EscapedPath(&source));
    Ok(code)
}

/// Every file the demo writes is its own file: in a reused `--dir`, a hard or symbolic link
/// planted between two of the names would make one step write over another's file (the
/// source it reads included). A usage error before the first file is written.
fn check_outputs(dir: &Path) -> anyhow::Result<()> {
    let artifact = dir.join(ARTIFACT);
    let onnx_path = dir.join(ONNX);
    let files = [
        dir.join(SOURCE),
        artifact.clone(),
        dir.join(ARTIFACT_PTH),
        artifact.with_extension("config.json"),
        dir.join(REPORT),
        dir.join(REPORT).with_extension("txt"),
        dir.join(IMAGE),
        dir.join(PYRAMID),
        dir.join(VIZ),
        onnx::data_path(&onnx_path),
        onnx_path,
    ];
    let roles: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|p| (format!("the demo's {}", p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()), p))
        .collect();
    comer_port::export::outputs::check(&roles, &[])?;
    Ok(())
}

/// The demo folder: `dir` (created when missing; refused when not empty unless `force`) or a
/// fresh folder under the system temp folder.
fn prepare_dir(dir: Option<&Path>, force: bool) -> anyhow::Result<PathBuf> {
    let io = |path: &Path, source| WriteError::Io { path: path.to_path_buf(), source };
    if let Some(d) = dir {
        if d.exists() {
            let mut entries = std::fs::read_dir(d).map_err(|e| io(d, e))?;
            if entries.next().is_some() && !force {
                return Err(anyhow::Error::new(WriteError::Exists(d.to_path_buf()))
                    .context("the demo folder is not empty; nothing was written"));
            }
        } else {
            std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
        }
        return std::fs::canonicalize(d).map_err(|e| io(d, e).into());
    }
    let base = std::env::temp_dir();
    for i in 0..TEMP_TRIES {
        let d = base.join(format!("comer-port-demo-{}-{i}", std::process::id()));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&d, e).into()),
        }
    }
    Err(io(&base, std::io::Error::other("no fresh folder name for the demo")).into())
}

/// A seeded `w×h` RGB test image as PNG bytes: smooth colour ramps and a disc, with seeded
/// noise, so that the pyramid and its PCA view have structure to show.
fn seeded_png(seed: u64, h: usize, w: usize) -> anyhow::Result<Vec<u8>> {
    let noise = seeded_values(seed, h * w * 3);
    let (cy, cx, r) = (h as f32 * 0.55, w as f32 * 0.4, h.min(w) as f32 * 0.3);
    let mut px = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            let (fy, fx) = (y as f32 / h as f32, x as f32 / w as f32);
            let inside = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt() < r;
            let base = if inside { [230.0, 200.0 * fy, 40.0] } else { [255.0 * fx, 255.0 * fy, 160.0] };
            for (c, b) in base.iter().enumerate() {
                let v = b + 12.0 * noise[(y * w + x) * 3 + c];
                px.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    let img = image::RgbImage::from_raw(w as u32, h as u32, px).context("demo image: buffer size mismatch")?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}

/// `text` with every line prefixed by `pad`.
fn indent(text: &str, pad: &str) -> String {
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}
